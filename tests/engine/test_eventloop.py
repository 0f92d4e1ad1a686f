"""Tests of tidings.engine.eventloop: ``tidings.run`` on uvloop where it is
installed, on asyncio's own loop where it is not."""

from __future__ import annotations

import asyncio
import sys

import pytest

import tidings
from tidings.engine.eventloop import loop_name


async def running_loop() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_run_returns_what_main_returns_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    assert loop_name() == "uvloop"
    assert tidings.run(running_loop()) == "uvloop"


def test_run_falls_back_to_asyncio_without_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop fails
    assert loop_name() == "asyncio"
    assert tidings.run(running_loop()) == "asyncio"


def test_run_raises_what_main_raises() -> None:
    async def fails() -> None:
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        tidings.run(fails())
