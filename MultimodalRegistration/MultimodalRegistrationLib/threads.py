"""The thread setting: how many threads torch, SimpleITK and the BLAS/OpenMP libraries use.

One place for it: ``mmreg batch`` (each case and each worker process) and the lab's benchmarks
(``mmreg evaluate --threads``, ``mmreg evaluate-real --threads``) call these. The thread count changes
the order of floating-point reductions, hence the last bits of a result: runs are bit-identical only
for the same thread count (docs/BATCH.md).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional

#: what OpenMP, MKL, OpenBLAS, numexpr and ITK (elastix, ANTs) read when they start their thread pools
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


def set_threads(threads: int) -> Optional[int]:
    """Limits torch and SimpleITK to ``threads`` threads in this process; returns torch's previous setting
    (None without torch), so that a caller can restore it."""
    previous = None
    try:
        import torch
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
    except ImportError:
        pass
    try:
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    except Exception:
        pass
    return previous


def limit_process_threads(threads: int) -> None:
    """Thread limits for a whole process (a batch worker, a benchmark run): the environment variables of
    :data:`THREAD_ENV_VARS` (for libraries that start later), torch, SimpleITK, and one torch inter-op thread."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    set_threads(threads)
    try:
        import torch
        torch.set_num_interop_threads(1)
    except (ImportError, RuntimeError):
        pass


def cpu_share(most: int = 2) -> int:
    """How many cores this process should keep busy, at most ``most``: ``OMP_NUM_THREADS`` when set (what
    ``mmreg batch --threads`` gives each case), else the CPUs this process may run on."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS") or 0)
    except ValueError:
        n = 0
    if n <= 0:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:      # not on Linux
            n = os.cpu_count() or 1
    return max(1, min(int(most), n))


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's (process-wide) intra-op thread count set to ``n`` inside the block, when torch is in use
    (the pipeline's concurrent jobs and the search engine's calls), restored after it."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None and before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch is not None and before != n:
            torch.set_num_threads(before)
