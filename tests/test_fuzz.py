"""The fuzz targets of fuzz/ run, briefly, under atheris; the long runs are
``scripts/fuzz SECONDS`` (docs/fuzzing.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import skip_unless_ci

FUZZ = Path(__file__).parent.parent / "fuzz"
TARGETS = sorted(path.stem for path in FUZZ.glob("fuzz_*.py"))


def test_every_parser_has_a_target() -> None:
    assert TARGETS == [
        "fuzz_commands",
        "fuzz_connection",
        "fuzz_frames",
        "fuzz_handshake",
    ]


@pytest.mark.parametrize("name", TARGETS)
def test_a_short_fuzz_run_finds_nothing(name: str, tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        skip_unless_ci("atheris is not installed (pip install atheris)")
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZ / f"{name}.py"),
            "-runs=2000",
            "-max_total_time=10",
            "-rss_limit_mb=1024",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", TARGETS)
def test_a_target_replays_an_input_without_atheris(name: str, tmp_path: Path) -> None:
    # How a crash the fuzzer saved is reproduced: the same checks, no atheris.
    sample = tmp_path / "input"
    sample.write_bytes(b"\x01" + b"GET / HTTP/1.1\r\n\r\n")
    replay = subprocess.run(
        [sys.executable, str(FUZZ / f"{name}.py"), "--replay", str(sample)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
