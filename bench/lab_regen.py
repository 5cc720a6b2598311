"""Regenerate docs/lab.md: every `nextoken lab` experiment at one budget, one after another, with the wall time
of each, then the page from their reports. Run it with NOTHING else on the machine: the wall times are quoted.

    python bench/lab_regen.py                          # all experiments at small into runs/lab-small/, then docs/lab.md
    python bench/lab_regen.py --only warmup z-loss     # some of them (the page keeps the others' last sections)
    python bench/lab_regen.py --page-only              # rebuild docs/lab.md from runs/lab-small/*/, training nothing

Each experiment runs as `nextoken lab run NAME --budget B --out OUT/NAME` in its own process; a rerun after an
interruption continues where it stopped (finished runs are read back), but then its wall time is not the
whole cost: delete OUT/NAME to time it afresh. Wall times go to OUT/NAME/wall.json; figures are copied to
docs/img/lab/. Hand-written notes ("*Note (by hand, ...)*" paragraphs after a report in the current
docs/lab.md) are carried over to the new page, and listed, so that they can be checked against the new figures.
Estimated total on a quiet 2-core CPU at small: about 35 min (each experiment's `cost` in `nextoken lab list`,
estimates themselves until this script has been run quietly).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nextoken.lab import available  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="small", choices=("smoke", "small", "full"))
    ap.add_argument("--out", default=None, help="experiment directories (default runs/lab-BUDGET)")
    ap.add_argument("--only", nargs="*", help="these experiments only")
    ap.add_argument("--page", default=str(ROOT / "docs" / "lab.md"))
    ap.add_argument("--page-only", action="store_true", help="rebuild the page from the reports, train nothing")
    args = ap.parse_args()
    out = Path(args.out or f"runs/lab-{args.budget}")
    names = args.only or available()
    if not args.page_only:
        for name in names:
            d = out / name
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            rc = subprocess.call([sys.executable, "-m", "nextoken", "lab", "run", name, "--budget", args.budget,
                                  "--out", str(d)], cwd=os.getcwd())
            wall = time.perf_counter() - t0
            if rc:
                print(f"{name} failed (exit {rc}); rerun this script to continue it", file=sys.stderr)
                return rc
            (d / "wall.json").write_text(json.dumps({"wall_s": wall, "load_before": os.getloadavg(),
                                                     "cpus": os.cpu_count(), "machine": platform.processor()}))
            print(f"{name}: {wall / 60:.1f} min", flush=True)
    write_page(out, args.budget, Path(args.page))
    return 0


SHAPES = {"smoke": "a test of the plumbing: 2 blocks x 32 wide, context 32, batches of 4 x 32 tokens",
          "small": "small on purpose: 3 blocks x 64 wide, context 64, batches of 16 x 64 tokens",
          "full": "for a GPU: 6 blocks x 384 wide, context 256, batches of 32 x 256 tokens"}


def write_page(out: Path, budget: str, page: Path) -> None:
    text = page.read_text() if page.is_file() else ""
    notes = _hand_notes(text)
    kept_sections, kept_rows = _sections(text), _rows(text)
    img = page.parent / "img" / "lab"
    img.mkdir(parents=True, exist_ok=True)
    rows, sections, total = [], [], 0.0
    for name in available():
        d = out / name
        if not (d / "figures.json").is_file():  # not rerun here (--only, or another --out): the page's own report
            if name in kept_sections and name in kept_rows:
                sections.append(kept_sections[name])
                rows.append(kept_rows[name])
            continue
        f = json.loads((d / "figures.json").read_text())
        wall = json.loads((d / "wall.json").read_text())["wall_s"] if (d / "wall.json").is_file() else None
        total += wall or 0.0
        shutil.copy(d / "figure.png", img / f"{name}.png")
        report = (d / "report.md").read_text().replace("![figure](figure.png)", f"![figure](img/lab/{name}.png)")
        report = report.replace("# ", "## ", 1).rstrip() + "\n"
        if wall is not None:
            report += f"\nWall time: {wall / 60:.1f} min (`nextoken lab run {name} --budget {budget}`).\n"
        for note in notes.get(name, []):
            report += "\n" + note + "\n"
        sections.append(report)
        seeds = ", ".join(map(str, f.get("seeds") or [])) or "-"
        rows.append(f"| [{name}](#{name}-budget-{budget}) | {f['verdict']} | "
                    f"{'-' if wall is None else f'{wall / 60:.1f} min'} | {seeds} |")
    walls = f"; total wall time {total / 60:.0f} min" if total else ""
    head = f"""# nextoken lab: the claims of pretraining, rerun

`nextoken lab run NAME --budget {budget}` trains what an experiment needs, measures, draws, and says whether the
claim held at this scale. The reports below were written by `python bench/lab_regen.py` on {date.today()}
({os.cpu_count()} CPUs{walls}). Each verdict is computed from the measured figures by
the rule its report states (`nextoken/lab/NAME.py`, `verdict`), never written by hand.

How the rules decide. Every arm is trained with the same seeds (train.seed fixes the initialization and the data
order), so the arms of one seed differ only in what the experiment changes, and each effect is a paired
difference given as mean ± standard error over the seeds. An effect decides when it is more than 2 standard
errors from zero; "inconclusive" means it was not, and the report says so. Claims about stability (warmup,
z-loss) are decided as Wortsman et al. 2023 (Small-scale proxies for large-scale Transformer training
instabilities) decide them: final loss against a sweep of learning rates, with and without the remedy, and the
remedy's effect on the LR sensitivity (the mean over the LRs of min(loss, loss at init) minus the best loss).

The `{budget}` budget is {SHAPES[budget]} on the
built-in corpus (the standard library; byte-level tokens, or the 4096-token BPE vocabulary where the claim is
about subword vocabularies), for the steps each report states; a report whose model differs says so.
`--budget full` is for a GPU. The runs a report names are ordinary run directories under the experiment's
`--out` (not committed; the command recreates them), so `nextoken plot`, `nextoken eval` and `nextoken sample`
work on them, and `nextoken serve lab` shows every experiment's report, figure and runs in the browser (its "Lab"
page). The dated notes after a report are written by hand.

| experiment | verdict | wall time at {budget} | seeds |
|---|---|---|---|
""" + "\n".join(rows) + "\n"
    page.write_text(head + "\n" + "\n".join(sections))
    kept = sum(len(v) for v in notes.values())
    print(f"wrote {page} ({len(sections)} reports, total wall {total / 60:.1f} min)"
          + (f"; {kept} hand-written notes carried over: check them against the new figures" if kept else ""))


def _sections(text: str) -> dict[str, str]:
    """experiment -> its whole section ('## NAME (budget ...' up to the next one) in the current page."""
    parts = re.split(r"(?m)^(?=## \S+ \(budget)", text)
    return {m.group(1): part.rstrip() + "\n" for part in parts if (m := re.match(r"## (\S+) \(budget", part))}


def _rows(text: str) -> dict[str, str]:
    """experiment -> its row of the current page's table."""
    return {m.group(1): line for line in text.splitlines() if (m := re.match(r"\| \[(\S+)\]\(#", line))}


def _hand_notes(text: str) -> dict[str, list[str]]:
    """experiment -> its '*Note (by hand ...' paragraphs in the current page."""
    notes: dict[str, list[str]] = {}
    name = None
    for para in re.split(r"\n\s*\n", text):
        if m := re.match(r"## (\S+) \(budget", para):
            name = m.group(1)
        elif name and para.startswith("*Note (by hand"):
            notes.setdefault(name, []).append(para.strip())
    return notes


if __name__ == "__main__":
    raise SystemExit(main())
