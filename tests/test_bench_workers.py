"""``python -m benchmarks.workers`` in its fast form: one round of one short
window each, 1 and 2 workers on a real redis-server. It proves the command
works end to end and measures nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from .conftest import skip_unless_ci

ROOT = Path(__file__).parents[1]


async def test_the_workers_benchmark_runs_one_and_two_workers() -> None:
    if shutil.which("redis-server") is None:
        skip_unless_ci("redis-server is not installed")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "benchmarks.workers", "--rounds", "1", "--repeat", "1"),
        *("--duration", "0.3", "--warmup", "0.1", "--conns", "20"),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    rows = [line for line in out.decode().splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["workers", "1", "2"], out
