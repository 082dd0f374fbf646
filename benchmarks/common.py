"""Measuring helpers shared by the benchmarks: timing, peak tensor memory, tables (op counts: ``models.flops``).

* :func:`interleaved_timings` -- wall time of several calls, warmed up and repeated in
  round-robin so that load from other processes falls on every call alike, optionally each
  started in a quiet moment (:func:`wait_for_quiet_cpu`), with the share of the CPUs that other
  processes used during each repeat.
* :func:`peak_tensor_bytes` -- high-water mark of the bytes torch's CPU allocator holds
  during a call, over what it held before (from ``torch.profiler`` allocation events).
* :func:`markdown_table` -- rows of dicts as a Markdown table.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from models.precision import detect_cpu_capability

# ----- time -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuTimes:
    """Cumulative jiffies of all CPUs from ``/proc/stat``: busy (user, nice, system, irq, softirq,
    steal) and total."""

    busy: int
    total: int

    @classmethod
    def parse(cls, stat_line: str) -> CpuTimes:
        """The aggregate ``cpu ...`` line of ``/proc/stat``."""
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in stat_line.split()[1:9])
        busy = user + nice + system + irq + softirq + steal
        return cls(busy=busy, total=busy + idle + iowait)

    @classmethod
    def now(cls) -> CpuTimes | None:
        """Current counters, None where ``/proc/stat`` does not exist."""
        try:
            with open("/proc/stat") as stat:
                return cls.parse(stat.readline())
        except OSError:
            return None

def others_busy_share(before: CpuTimes, after: CpuTimes, own_cpu_seconds: float) -> float:
    """Share of all CPUs' time between two samples that other processes kept busy: the machine's
    busy time minus ``own_cpu_seconds``, the CPU time this process used meanwhile (0..1)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = (after.total - before.total) / tick
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, (after.busy - before.busy) / tick - own_cpu_seconds) / total)

def timed_call(fn: Callable[[], Any]) -> tuple[float, float | None]:
    """Run ``fn()``; return its wall-clock seconds and the share of the CPUs that other processes
    used meanwhile (None where ``/proc/stat`` does not exist)."""
    before, own = CpuTimes.now(), time.process_time()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    own, after = time.process_time() - own, CpuTimes.now()
    return seconds, None if before is None or after is None else others_busy_share(before, after, own)

def wait_for_quiet_cpu(max_busy: float, timeout: float, window: float = 1.0) -> None:
    """Sleep ``window``-second windows until other processes kept at most ``max_busy`` of the CPUs
    busy during one, or until ``timeout`` seconds have passed (at once where ``/proc/stat`` does
    not exist).

    On a shared machine another process's burst can halve a call's speed or worse (with two
    torch threads on two cores, every parallel op waits for the thread that was preempted), so
    timed calls should start in quiet moments where there are any."""
    deadline = time.monotonic() + timeout
    while True:
        _, share = timed_call(lambda: time.sleep(window))
        if share is None or share <= max_busy or time.monotonic() >= deadline:
            return

@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the repeats of one call, and the share of the CPUs that other
    processes used during each (None when not measured)."""

    seconds: tuple[float, ...]
    others_busy: tuple[float | None, ...]

    def undisturbed(self, max_others_busy: float) -> tuple[float, ...]:
        """Seconds of the repeats during which other processes used at most ``max_others_busy``
        of the CPUs (unmeasured ones count as undisturbed); all repeats when there is none."""
        kept = tuple(s for s, b in zip(self.seconds, self.others_busy) if b is None or b <= max_others_busy)
        return kept or self.seconds

def interleaved_timings(
    calls: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    before_each: Callable[[], Any] = lambda: None,
) -> dict[str, Timing]:
    """Time every call ``repeats`` times after ``warmup`` untimed runs each.

    The calls take turns (round ``r`` runs each of them once) so that a burst of load from
    another process is spread over all of them instead of spoiling one. ``before_each`` runs,
    untimed, before every timed call (e.g. :func:`wait_for_quiet_cpu`).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[tuple[float, float | None]]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            before_each()
            samples[name].append(timed_call(fn))
    return {name: Timing(*map(tuple, zip(*values))) for name, values in samples.items()}

# ----- memory -----------------------------------------------------------------------------------
def _walk(nodes) -> Iterator:
    for node in nodes:
        yield node
        yield from _walk(node.children)

def peak_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` once and return its result and the peak of the bytes that torch's CPU
    allocator held during the call on top of what it held before.

    Every tensor allocation and free during the call is recorded by ``torch.profiler``
    (``profile_memory=True``); the peak is the maximum of their running sum. This is what the
    call's tensors need -- weights and inputs allocated before are not in it -- and it does not
    depend on whether the C allocator returns freed pages to the system, which makes the
    process RSS a poor per-call measure. Memory that libraries allocate outside torch's
    allocator (oneDNN or BLAS scratch space) is not seen.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    tree = prof.profiler.kineto_results.experimental_event_tree()
    allocations = sorted(
        (node for node in _walk(tree) if node.tag == _EventType.Allocation),
        key=lambda node: node.start_time_ns,
    )
    held = peak = 0
    for node in allocations:
        held += node.extra_fields.alloc_size
        peak = max(peak, held)
    return result, peak

def process_peak_rss_bytes() -> int | None:
    """High-water mark of this process's resident memory (``VmHWM``), None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None

# ----- environment and output -------------------------------------------------------------------
def machine_description() -> dict[str, Any]:
    """CPU model and capability, core count, torch threads and version, and the 1-minute load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "capability": detect_cpu_capability().describe(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def machine_line() -> str:
    """``machine: <CPU model> (<capability>), N cores, load L``: the line a benchmark prints above its table."""
    m = machine_description()
    load = f"{m['load_1min']:.2f}" if m["load_1min"] is not None else "?"
    return f"machine: {m['cpu']} ({m['capability']}), {m['cores']} cores, load {load}"

@dataclass(frozen=True)
class Column:
    """A table column: the row key it shows, its header, and a format for its values."""

    key: str
    header: str
    fmt: str = "{}"

def markdown_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a Markdown pipe table; a missing or None value prints as ``-``."""

    def cell(column: Column, row: Mapping[str, Any]) -> str:
        value = row.get(column.key)
        return "-" if value is None else column.fmt.format(value)

    body = [[cell(c, r) for c in columns] for r in rows]
    widths = [max(len(c.header), *(len(line[i]) for line in body)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.header.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(line, widths)) + " |" for line in body]
    return "\n".join(lines)

# ----- latency ----------------------------------------------------------------------------------
QUERY_SUBJECTS = ("a dog", "a red ball", "two people", "a car", "snow", "a cartoon rabbit", "a bicycle", "waves",
                  "a cat", "a train")
QUERY_ACTIONS = ("running on a beach", "at night", "in slow motion", "on a city street", "falling from the sky",
                 "under a blue sky", "next to a river", "in a forest", "at sunset", "indoors")

def distinct_queries(n: int) -> list[str]:
    """``n`` different query texts (no encoder cache hits between them)."""
    combos = [f"{s} {a}" for s in QUERY_SUBJECTS for a in QUERY_ACTIONS]
    return [combos[i % len(combos)] + ("" if i < len(combos) else f" #{i}") for i in range(n)]

def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))

def latency_percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 and mean of latencies in milliseconds, rounded to 0.1 ms."""
    stats = {f"p{q}": percentile(values_ms, q) for q in (50, 95, 99)} | {"mean": float(np.mean(values_ms))}
    return {k: round(v, 1) for k, v in stats.items()}

# ----- databases --------------------------------------------------------------------------------
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"

@contextmanager
def temporary_database(prefix: str, admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A new, empty PostgreSQL database (SQLAlchemy URL), dropped afterwards, on the server of ``admin_url``."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    server = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
