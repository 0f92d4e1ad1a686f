"""The Autobahn|Testsuite, quick form (docs/conformance.md).

Runs ``tests/conformance/autobahn.py --quick``: about 300 cases against
``python -m tidings echo`` and 300 with a tidings client, in about a minute;
and ``--side asgi``: 300 cases against a Starlette echo app under uvicorn
with ``tidings.asgi``, in about half a minute (plus about a minute the first
time, to build the suite's Python 2.7 environment). Every case must be OK or
INFORMATIONAL, its close behavior too. Without pyenv's Python 2.7.18 the
test is skipped, saying why, except under CI (``$CI`` set), where it fails:
CI machines have it.

The other tests here check the harness's own report reading, everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).with_name("autobahn.py")

#: Hard bound on the whole run; it normally takes 1-2 minutes. The harness
#: bounds each step itself, well within this.
TIMEOUT = 900


def load_harness() -> ModuleType:
    name = "tidings_conformance_autobahn"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_quick(tmp_path: Path, *args: str) -> str:
    """Run the harness's quick form; return its summary."""
    harness = load_harness()
    python27, how = harness.find_python27()
    if python27 is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Autobahn testsuite, but: {how}")
        pytest.skip(how)
    proc = subprocess.Popen(
        [sys.executable, str(HARNESS), "--quick", "--out", str(tmp_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the harness then ends the processes it started
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"the Autobahn run took over {TIMEOUT} s:\n{output[-5000:]}")
    print(output)
    assert proc.returncode == 0, output[-8000:]
    return (tmp_path / "summary.md").read_text()


def test_autobahn_quick_both_sides(tmp_path: Path) -> None:
    summary = run_quick(tmp_path)
    assert summary.count("| **total** | **301** |") == 2, summary


def test_autobahn_quick_against_an_asgi_app_under_uvicorn(tmp_path: Path) -> None:
    # A Starlette echo app under `uvicorn --ws tidings.asgi:WebSocketProtocol`.
    summary = run_quick(tmp_path, "--side", "asgi")
    assert summary.count("| **total** | **301** |") == 1, summary
    assert "Starlette echo app under `uvicorn" in summary


# -- the harness's report reading, without the suite ----------------------------


def write_index(path: Path, results: dict[str, tuple[str, str]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    index = {
        case: {
            "behavior": behavior,
            "behaviorClose": close,
            "remoteCloseCode": 1000,
            "reportfile": f"tidings_case_{case.replace('.', '_')}.json",
        }
        for case, (behavior, close) in results.items()
    }
    (path / "index.json").write_text(json.dumps({"tidings": index}))
    report = {"description": "d", "expectation": "e", "result": "r"}
    (path / "tidings_case_3_2.json").write_text(json.dumps(report))


def test_summary_counts_every_verdict_by_group(tmp_path: Path) -> None:
    harness = load_harness()
    write_index(
        tmp_path,
        {
            "1.1.1": ("OK", "OK"),
            "3.2": ("NON-STRICT", "OK"),
            "7.1.6": ("INFORMATIONAL", "INFORMATIONAL"),
            "12.1.1": ("UNIMPLEMENTED", "OK"),
            "12.1.2": ("FAILED", "WRONG CODE"),
            "12.1.3": ("SOMETHING NEW", "UNCLEAN"),
        },
    )
    results = harness.load_results(tmp_path, 6)
    table = harness.summary_table(results).splitlines()
    assert table[2] == "| 1 Framing | 1 | 1 | 0 | 0 | 0 | 0 | 1 | 0 | 0 |"
    assert table[3] == "| 3 Reserved Bits | 1 | 0 | 1 | 0 | 0 | 0 | 1 | 0 | 0 |"
    assert table[4] == "| 7 Close Handling | 1 | 0 | 0 | 1 | 0 | 0 | 0 | 1 | 0 |"
    assert table[5] == (
        "| 12 Compression (payloads) | 3 | 0 | 0 | 0 | 1 | 2 | 1 | 0 | 2 |"
    )
    assert table[6].startswith("| **total** | **6** | **1** | **1** | **1** |")
    clean = [case for case, r in results.items() if harness.is_clean(r)]
    assert clean == ["1.1.1", "7.1.6"]
    side = harness.Side("server", results, tmp_path, {"3.2": "what we saw"})
    details = harness.unclean_details(side)
    assert details.startswith("- **3.2**: behavior NON-STRICT, close OK")
    assert "  - expectation: e" in details and "  - tidings: what we saw" in details


def test_missing_or_short_reports_are_a_harness_error(tmp_path: Path) -> None:
    harness = load_harness()
    with pytest.raises(harness.HarnessError, match="missing"):
        harness.load_results(tmp_path, 1)
    (tmp_path / "index.json").write_text("{}")  # what wstest leaves if nothing ran
    with pytest.raises(harness.HarnessError, match="nothing ran"):
        harness.load_results(tmp_path, 1)
    write_index(tmp_path, {"1.1.1": ("OK", "OK")})
    with pytest.raises(harness.HarnessError, match="expected 517"):
        harness.load_results(tmp_path, 517)


def test_python27_override_must_be_a_python27(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = load_harness()
    monkeypatch.setenv("TIDINGS_PYTHON27", sys.executable)
    path, why = harness.find_python27()
    assert path is None and "not a working Python 2.7" in why
