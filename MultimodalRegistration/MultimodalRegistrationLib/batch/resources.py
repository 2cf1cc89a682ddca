"""What one machine offers: CPU cores, memory, and the --jobs plan (the thread setting is
:mod:`MultimodalRegistrationLib.threads`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .manifest import Case

#: Memory model for --jobs (docs/BATCH.md): a worker needs a fixed base (Python, torch, the GAN)
#: plus a multiple of the float32 size of its inputs (copies, resampled volumes, the fused volume).
BASE_WORKER_BYTES = 700 * 1024**2
BYTES_FACTOR = 12


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory_bytes() -> Optional[int]:
    """MemAvailable (Linux), capped by a cgroup limit; sysconf elsewhere; None when unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    for cg in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(cg).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            limit = int(raw)
            used = 0
            for cur in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
                try:
                    used = int(Path(cur).read_text().strip())
                    break
                except (OSError, ValueError):
                    continue
            if limit < (1 << 60):
                room = max(0, limit - used)
                avail = room if avail is None else min(avail, room)
        break
    return avail


def estimate_case_bytes(case: Case) -> int:
    """Peak memory of one case, estimated from the input headers only (no voxel is read)."""
    import nibabel as nib
    import numpy as np

    vox = 0
    for role, p in case.inputs().items():
        try:
            shape = nib.load(str(p)).shape
            vox += int(np.prod(shape, dtype=np.int64))
        except Exception:
            continue  # unreadable inputs fail in their own case with a proper message
    return BASE_WORKER_BYTES + BYTES_FACTOR * 4 * vox


def plan_jobs(requested: int, cases: list[Case], n_to_run: Optional[int] = None,
              threads: Optional[int] = None) -> tuple[int, int, list[str]]:
    """(jobs, torch threads per job, notes): jobs capped by the cores, the cases and the memory.

    Threads per job default to cores // jobs; an explicit ``threads`` is kept as given.
    """
    notes = []
    cpus = available_cpus()
    jobs = max(1, int(requested))
    if jobs > cpus:
        notes.append(f"--jobs {jobs} capped at the {cpus} available CPU cores")
        jobs = cpus
    n = len(cases) if n_to_run is None else n_to_run
    jobs = max(1, min(jobs, n))
    avail = available_memory_bytes()
    if cases and avail:
        need = max(estimate_case_bytes(c) for c in cases)
        fit = int(0.8 * avail // need)
        if fit < 1:
            notes.append(f"the largest case may need ~{need / 1024**3:.1f} GiB, more than the "
                         f"{avail / 1024**3:.1f} GiB available; running one case at a time")
            jobs = 1
        elif fit < jobs:
            notes.append(f"--jobs lowered to {fit}: each case may need ~{need / 1024**3:.1f} GiB and "
                         f"{avail / 1024**3:.1f} GiB is available")
            jobs = fit
    if threads is None or threads < 1:
        threads = max(1, cpus // jobs)
    return jobs, int(threads), notes



def plan_tasks(requested: int, tasks: list, threads: Optional[int] = None, note=None) -> tuple[int, int]:
    """:func:`plan_jobs` for the ``tasks`` about to run (each has ``.case`` and ``.threads``): passes its
    notes to ``note``, gives every task its torch thread count, returns (jobs, threads per job)."""
    n_jobs, n_threads, notes = plan_jobs(requested, [t.case for t in tasks], len(tasks), threads)
    if note is not None:
        for n_ in notes:
            note(n_)
    for t in tasks:
        t.threads = n_threads
    return n_jobs, n_threads
