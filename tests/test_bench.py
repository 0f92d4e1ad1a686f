"""The benchmark's smoke form, and the pieces it is built from.

The smoke run proves that ``tidings bench`` works end to end (servers,
load client, report) with tidings alone, in seconds. It asserts nothing
about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tidings.bench import add_arguments, build_parser
from tidings.bench.loadgen import Expected, Stream, build_frame, mask_bytes
from tidings.bench.report import (
    NOTES_END,
    NOTES_START,
    kept_notes,
    number,
    ratio,
)
from tidings.bench.scenarios import FULL, LABELS, TIDINGS, smoke

#: The smoke run takes about 25 s; a slow CI machine gets room to spare.
SMOKE_TIMEOUT = 240


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench")
    docs = out / "performance.md"
    docs.write_text(f"old\n{NOTES_START}\nkeep this analysis\n{NOTES_END}\nold\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidings.bench",
            "--smoke",
            "--out",
            str(out),
            "--logs",
            str(out / "logs"),
            "--docs",
            str(docs),
        ],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    log = out / "logs" / "children.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (
        log.read_text()[-3000:] if log.exists() else ""
    )
    return {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "report": (out / "report.md").read_text(),
        "docs": docs.read_text(),
        "results": json.loads((out / "results.json").read_text()),
    }


def table_rows(report: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every table row in ``report``."""
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_smoke_report_has_every_row(smoke_run: dict[str, object]) -> None:
    report = smoke_run["report"]
    assert isinstance(report, str)
    rows = table_rows(report)
    header = rows["scenario"]
    assert header[:3] == ["unit", LABELS["tidings-cb"], LABELS["tidings-async"]]
    for scenario in smoke():
        if scenario.kind == "client":
            continue
        cells = rows[scenario.title]
        assert cells[0] == scenario.unit
        for cell in cells[1:3]:
            # "median [min-max]", a number first: nothing failed or missing.
            assert cell[0].isdigit(), (scenario.title, cell)
    assert "## Targets" in report
    assert "## Clients" in report
    assert "smoke run" in report
    assert "Load client and CPU" in report


def test_smoke_results_json(smoke_run: dict[str, object]) -> None:
    results = smoke_run["results"]
    assert isinstance(results, dict)
    assert results["meta"]["smoke"] is True
    assert [s["key"] for s in results["scenarios"]] == [s.key for s in FULL]
    for scenario in results["scenarios"]:
        names = (
            ["raw", "tidings-cb", "tidings"]
            if scenario["kind"] == "client"
            else list(TIDINGS)
        )
        for name in names:
            result = scenario["results"][name]
            assert result["error"] is None, (scenario["key"], name, result)
            assert result["values"], (scenario["key"], name)
            assert max(result["values"]) > 0, (scenario["key"], name)
    bcast = next(s for s in results["scenarios"] if s["kind"] == "broadcast")
    assert "tidings" in bcast["results"]["tidings-cb"]["info"]["broadcast"]


def test_smoke_progress_and_summary(smoke_run: dict[str, object]) -> None:
    stderr, stdout = smoke_run["stderr"], smoke_run["stdout"]
    assert isinstance(stderr, str) and isinstance(stdout, str)
    assert "[ 1/" in stderr and "left" in stderr
    # The run ends with the tables.
    assert "Targets" in stdout and "| scenario | unit |" in stdout


def test_smoke_docs_keep_notes(smoke_run: dict[str, object]) -> None:
    docs = smoke_run["docs"]
    assert isinstance(docs, str)
    assert docs.startswith("# Performance")
    assert kept_notes(docs) == "keep this analysis"


def test_parser_for_the_cli() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--smoke", "--servers", "tidings-cb", "--repeat", "2"])
    assert args.smoke and args.servers == "tidings-cb" and args.repeat == 2
    assert build_parser().parse_args([]).smoke is False


def test_frames_and_stream() -> None:
    assert build_frame(b"ab") == b"\x82\x02ab"
    assert len(build_frame(bytes(200))) == 4 + 200
    assert len(build_frame(bytes(70000))) == 10 + 70000
    masked = build_frame(b"hello", masked=True)
    assert masked[1] == 0x80 | 5
    assert mask_bytes(masked[6:], masked[2:6]) == b"hello"
    frame = build_frame(b"x" * 40)
    stream = Stream(Expected(frame))
    data = frame * 5
    assert stream.feed(data[:7]) == 0
    assert stream.feed(data[7:100]) == 2
    assert stream.feed(data[100:]) == 3
    assert stream.errors == 0
    assert stream.feed(b"\x81" + frame[1:]) == 1
    assert stream.errors == 1


def test_report_helpers() -> None:
    assert number(1_234_567) == "1.23M"
    assert number(123_456) == "123k"
    assert number(12_345) == "12.3k"
    assert number(4.0) == "4.00"
    r = ratio({"values": [2.0, 4.0, 6.0]}, {"values": [1.0, 2.0, 4.0]})
    assert r == (2.0, 0.5, 6.0)
    assert ratio({"values": [1.0]}, {"values": [], "error": "boom"}) is None
