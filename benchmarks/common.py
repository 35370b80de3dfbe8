"""Shared helpers of the benchmark scripts: machine description, results I/O, peak memory."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict:
    """Where a figure came from: CPU model and count, GPU if any, library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1min": os.getloadavg()[0],
    }


def _cpu_ticks() -> tuple[int, int]:
    """(total, idle) jiffies over all CPUs since boot (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]  # idle + iowait


def _own_cpu_s() -> float:
    """CPU seconds used by this process and its waited-for children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class LoadMonitor:
    """How much of the machine other processes used while a benchmark ran (Linux).

    ``others_busy`` is the fraction of all CPUs busy with work that was not this process or its
    children, between construction and :meth:`stop`; ``busy_before`` the fraction busy (all of it
    others') during a short idle sample at construction. Timings taken while others_busy is well
    above 0 are pessimistic: the benchmark's threads had to share the cores.
    """

    def __init__(self, sample_s: float = 1.0) -> None:
        self.busy_before = float("nan")
        self.others_busy = float("nan")
        try:
            t0, i0 = _cpu_ticks()
            time.sleep(sample_s)
            t1, i1 = _cpu_ticks()
            self.busy_before = 1.0 - (i1 - i0) / max(t1 - t0, 1)
            self._start = (t1, i1, _own_cpu_s())
        except (OSError, IndexError, ValueError):
            self._start = None

    def stop(self) -> dict:
        if self._start is not None:
            t0, i0, own0 = self._start
            t1, i1 = _cpu_ticks()
            hz = os.sysconf("SC_CLK_TCK")
            total_s = (t1 - t0) / hz
            busy_s = ((t1 - t0) - (i1 - i0)) / hz
            if total_s > 0:
                self.others_busy = max(0.0, busy_s - (_own_cpu_s() - own0)) / total_s
        return self.summary()

    @property
    def shared(self) -> bool:
        worst = max((x for x in (self.busy_before, self.others_busy) if x == x), default=0.0)
        return worst > 0.2

    def summary(self) -> dict:
        return {"busy_before": self.busy_before, "others_busy_during": self.others_busy, "shared": self.shared,
                "note": self.note()}

    def note(self) -> str:
        """One line for a results table: whether other jobs shared the machine during the run."""
        parts = []
        if self.busy_before == self.busy_before:
            parts.append(f"{100 * self.busy_before:.0f}% of the CPUs busy just before the run")
        if self.others_busy == self.others_busy:
            parts.append(f"{100 * self.others_busy:.0f}% busy with other processes during it")
        state = "shared with other CPU-heavy jobs" if self.shared else "not shared"
        return f"Machine {state}" + (f" ({'; '.join(parts)})" if parts else "") + "."


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def save_markdown(name: str, text: str) -> Path:
    """``benchmarks/results/<name>.md`` (the table a README links to)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text.rstrip() + "\n")
    return path


def machine_line(info: dict | None = None) -> str:
    """The machine as one markdown line."""
    m = info or machine()
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, torch {m['torch']} with {m['torch_threads']} threads"
            f"{gpu}), Python {m['python']}, {m['date']}.")


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str) + "\n")
    return path


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    r"""Student-t interval of :math:`\overline{a_s - b_s}` over runs paired by seed (the same seed gives
    both the same initialisation), :math:`\bar d \pm t_{n-1} s_d / \sqrt{n}`; a single pair gives a point."""
    import numpy as np
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        raise ValueError("paired_interval needs at least one pair")
    if d.size < 2:
        return float(d.mean()), float(d.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * float(d.std(ddof=1)) / np.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)
