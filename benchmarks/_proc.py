"""What the benchmark scripts read of this machine from /proc, and a free loopback port."""

from __future__ import annotations

import platform
import socket


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages, as /proc/loadavg says them."""
    with open("/proc/loadavg") as file:
        return " ".join(file.read().split()[:3])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs; iowait counts as idle, steal as busy (someone else's)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what platform says where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"
