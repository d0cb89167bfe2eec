"""Closing the window while a worker is stuck in a request: within 2 s, exit 0, no abort."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCENARIO = Path(__file__).with_name("close_scenario.py")
SCREENS = Path("/work/screens")


def test_close_during_a_stuck_model_request_exits_at_once(library: Path, tmp_path: Path):
    shot = SCREENS / "close_during_stuck_request.png" if SCREENS.is_dir() else tmp_path / "close.png"
    # faulthandler: a crash of the scenario prints every thread's stack into the failure.
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONFAULTHANDLER="1")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCENARIO), str(library), str(shot)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, f"exit {proc.returncode} after {took:.0f} s\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert "Destroyed while thread" not in proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in facts, facts["error"]
    assert "Asking" in str(facts["card"])
    assert float(facts["close_s"]) < 2.0, facts
    assert facts["running_at_close"] is True  # the request really was in flight when the window closed
    # The client cancels a request in flight (issue 10), so its thread usually ends within the wait;
    # one that does not is abandoned, never destroyed: either way the process exits 0 (checked above).
    print(f"\nclose during a stuck request: {facts['close_s']} s; screenshot {shot}")
