"""Compiled runs on a CPU are as exact as eager ones (issue 23): a run with `--train.compile on` at two threads,
killed after its first checkpoint and resumed, ends bit-identical to one never interrupted (so both fresh starts
agreed too). Before `device.exact_kernels`, inductor's embedding backward accumulated with atomic adds from both
threads: 12 passes over one batch gave 12 different gradients at this size, and two fresh runs of the tiny preset
parted at step 4. Each process compiles (three of them), hence `slow`."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import kill_recovery  # noqa: E402

COMPILED = ["--train.compile", "on", "--train.threads", "2", "--train.max_steps", "20"]


@pytest.mark.slow
def test_a_compiled_two_thread_run_killed_and_resumed_ends_bit_identical(bytes_data, tmp_path):
    reference, _ = kill_recovery.reference(bytes_data, tmp_path / "reference", COMPILED)
    run = tmp_path / "killed"
    proc = subprocess.Popen(kill_recovery._cmd("--data", str(bytes_data), "--out", str(run), *kill_recovery.RUN_FLAGS,
                                               *COMPILED), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not (run / "checkpoints" / "step_00000005").is_dir():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run(kill_recovery._cmd("--out", str(run), "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert kill_recovery.state_digest(run) == reference
