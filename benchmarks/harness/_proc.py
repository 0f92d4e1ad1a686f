"""Reading ``/proc``: CPU time of a process, busy time of a core, memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_times(pid: int | None) -> tuple[float, float] | None:
    """CPU seconds (user, system) used so far by process ``pid``."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``."""
    times = proc_times(pid)
    return None if times is None else sum(times)


def core_times() -> dict[int, tuple[int, int]]:
    """Per core: (ticks in processes, all ticks) since boot.

    Processes' ticks are user + nice + system: interrupts and softirqs (where
    loopback TCP does much of its work) and steal are left out, since
    ``/proc/PID/stat`` does not charge them to any process either.
    """
    times: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *values = line.split()
                nums = [int(v) for v in values[:8]]
                times[int(name[3:])] = (sum(nums[:3]), sum(nums))
    return times


def busy_fraction(
    before: dict[int, tuple[int, int]],
    after: dict[int, tuple[int, int]],
    core: int | None,
) -> float | None:
    """How busy ``core`` was between two :func:`core_times` readings."""
    if core is None or core not in before or core not in after:
        return None
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return busy / total if total > 0 else None


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def fd_limit(pid: int) -> int | None:
    """The soft limit on open files of ``pid``."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def open_fds(pid: int) -> int | None:
    """How many files ``pid`` has open."""
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


def servers_times(pids: Sequence[int]) -> tuple[float, float] | None:
    """CPU seconds (user, system) used so far by all of ``pids``; None if
    one is unreadable."""
    if not pids:
        return None
    user = system = 0.0
    for pid in pids:
        times = proc_times(pid)
        if times is None:
            return None
        user += times[0]
        system += times[1]
    return user, system


def servers_cpu(pids: Sequence[int]) -> float | None:
    """CPU seconds (user + system) used so far by all of ``pids``."""
    times = servers_times(pids)
    return None if times is None else sum(times)
