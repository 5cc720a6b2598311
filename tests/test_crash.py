"""SIGKILL at random moments (some in the middle of a checkpoint write), then --resume: the run must end
bit-identical to one never interrupted (issue 3). The harness is bench/kill_recovery.py's."""

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import kill_recovery  # noqa: E402


@pytest.mark.slow
def test_five_sigkills_then_resume_end_bit_identical(bytes_data, tmp_path):
    ref, train_s = kill_recovery.reference(bytes_data, tmp_path / "reference", [])
    trial = kill_recovery.survive(bytes_data, tmp_path / "killed", 5, train_s, random.Random(3), [])
    assert not trial.notes, trial.notes
    assert trial.kills == 5 and trial.resumes >= 5
    assert kill_recovery.state_digest(tmp_path / "killed") == ref
