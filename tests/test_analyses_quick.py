"""Every analysis runs end to end in its --quick mode (what CI can afford)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ANALYSES = sorted(p.parent.name for p in (ROOT / "analyses").glob("*/run.py"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ANALYSES)
def test_analysis_quick_mode(name: str) -> None:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "analyses" / name / "run.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
