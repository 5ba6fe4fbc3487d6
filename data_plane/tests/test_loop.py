"""The process's IO loop: a process that starts one hands the GIL between threads sooner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = ("import asyncio, sys; from data_plane.runtime.loop import run_coroutine; "
         "before = sys.getswitchinterval(); run_coroutine(asyncio.sleep(0)); print(before, sys.getswitchinterval())")


def _switch_intervals(**env: str) -> tuple[float, float]:
    """The GIL switch interval of a fresh interpreter before and after its IO loop starts."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=60).stdout
    before, after = out.split()
    return float(before), float(after)


def test_starting_the_io_loop_shortens_the_gil_switch_interval():
    assert _switch_intervals() == (0.005, 0.0005)


def test_the_switch_interval_is_configurable_and_zero_keeps_pythons():
    assert _switch_intervals(AGENTPLANE_GIL_SWITCH_INTERVAL="0.001") == (0.005, 0.001)
    assert _switch_intervals(AGENTPLANE_GIL_SWITCH_INTERVAL="0") == (0.005, 0.005)
