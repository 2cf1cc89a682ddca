"""Progress reporting shared by the CLI, the batch runner and the Slicer module.

A progress callback is ``progress(stage, done, total)``. ``json_progress`` writes one JSON line per
call on stderr (``{"stage": "translate", "done": 7, "total": 18}``), which the Slicer module reads
from its child process; ``bar_progress`` draws a terminal bar.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, Optional, TextIO

ProgressFn = Callable[[str, int, int], None]


def report(progress: Optional[ProgressFn], stage: str, done: int, total: int) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(stage, int(done), int(total))


def json_progress(stream: TextIO | None = None) -> ProgressFn:
    def _emit(stage: str, done: int, total: int) -> None:
        out = stream if stream is not None else sys.stderr
        out.write(json.dumps({"stage": stage, "done": int(done), "total": int(total)}) + "\n")
        out.flush()

    return _emit


def bar_progress(stream: TextIO | None = None, width: int = 30) -> ProgressFn:
    start = time.monotonic()

    def _draw(stage: str, done: int, total: int) -> None:
        out = stream if stream is not None else sys.stderr
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(round(frac * width))
        elapsed = time.monotonic() - start
        out.write(f"\r{stage:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:6.1f}s")
        if total > 0 and done >= total:
            out.write("\n")
        out.flush()

    return _draw
