"""The README's Python section runs as written (issue 10): the API a notebook user meets first."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_section_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python section)", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert "nats/token" in out[0] and "bits/byte" in out[0]
    assert out[1].startswith("4 ") and "step_00000040" in out[1]
    assert (tmp_path / "runs" / "api-demo" / "checkpoints" / "latest").is_file()
