"""Timing helpers shared by the benchmarks: synchronized wall-clock times of repeated calls, and waiting
for an idle machine so that other jobs on the same cores do not distort them."""

import dataclasses
import os
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the queued work of a CUDA device; nothing on the CPU."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def cpu_busy_fraction(interval_s: float = 0.5) -> float:
    """Fraction of all CPUs' time spent busy over the next `interval_s` seconds (from /proc/stat)."""

    def read() -> tuple[int, int]:
        with open('/proc/stat') as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = read()
    time.sleep(interval_s)
    total1, idle1 = read()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(timeout_s: float, threshold: float = 0.1) -> bool:
    """Block until the machine is idle or `timeout_s` has passed; True if it became idle."""
    if not os.path.exists('/proc/stat'):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cpu_busy_fraction() < threshold:
            return True
    return False


@dataclasses.dataclass
class Timing:
    seconds: list  # wall-clock seconds of each timed call, ascending
    idle_starts: int  # timed calls that started on an idle machine

    @property
    def best(self) -> float:
        return self.seconds[0]

    @property
    def median(self) -> float:
        return self.seconds[len(self.seconds) // 2]


def time_calls(
    function: Callable[[], object],
    reps: int,
    warmup: int = 1,
    device: torch.device = torch.device('cpu'),
    idle_timeout_s: float = 0.0,
) -> Timing:
    """Call `function` `warmup` times untimed (kernel generation, weight reorders, allocator growth), then time
    `reps` calls, each synchronized on CUDA; with idle_timeout_s > 0, each waits up to that long for an idle CPU."""
    for _ in range(warmup):
        function()
    seconds, idle_starts = [], 0
    for _ in range(reps):
        if idle_timeout_s > 0:
            idle_starts += wait_for_idle(idle_timeout_s)
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(sorted(seconds), idle_starts)


def best_seconds_taking_turns(functions: dict, reps: int) -> dict:
    """Best wall-clock seconds of each function of {name: function}; the functions take turns, so that load
    from other processes affects them alike."""
    best = {name: float('inf') for name in functions}
    for _ in range(reps):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
