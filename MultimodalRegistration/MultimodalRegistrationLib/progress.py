"""Progress reporting shared by the CLI, the batch runner and the Slicer module.

A progress callback is ``progress(stage, done, total)``. ``json_progress`` writes one JSON line per
call on stderr (``{"stage": "translate", "done": 7, "total": 18}``), which the Slicer module reads
from its child process; ``bar_progress`` draws a terminal bar with tqdm (one bar per stage).

Every command with a ``--progress`` option (``register``, ``demo``, ``convert``, ``batch``, ``evaluate-gan``)
declares it with :func:`add_progress_argument` and turns it into a callback with :func:`progress_from_args`.
"""
from __future__ import annotations

import argparse
import json
import sys
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


def bar_progress(stream: TextIO | None = None) -> ProgressFn:
    """A tqdm bar per stage on ``stream`` (stderr by default); a new stage closes the previous bar."""
    from tqdm import tqdm

    state = {"stage": None, "bar": None}

    def _draw(stage: str, done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None or state["stage"] != stage or (bar.total or 0) != max(int(total), 0):
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=max(int(total), 0), desc=f"{stage:<10}", leave=True,
                                      bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]",
                                      file=stream if stream is not None else sys.stderr, dynamic_ncols=True)
            state["stage"] = stage
        bar.n = min(int(done), bar.total) if bar.total else int(done)
        bar.refresh()
        if bar.total and done >= bar.total:
            bar.close()
            state["bar"] = None
            state["stage"] = None

    return _draw


PROGRESS_MODES = ("auto", "json", "bar", "none")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress {auto,json,bar,none}``, the same for every command."""
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="progress on stderr: JSON lines (for the Slicer module), a bar, or nothing "
                             "(default: a bar on a terminal, nothing otherwise)")


def progress_from_args(args, json_renderer: Callable = json_progress, bar_renderer: Callable = bar_progress):
    """The callback for ``args.progress``: ``json_renderer()``, ``bar_renderer()`` or None (``none``, or
    ``auto`` when stderr is not a terminal). ``mmreg batch`` passes its own renderers (batch events)."""
    mode = getattr(args, "progress", None) or "auto"
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    renderer = {"json": json_renderer, "bar": bar_renderer}.get(mode)
    return None if renderer is None else renderer()
