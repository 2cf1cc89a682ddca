"""Batch progress on the parent side: events (dicts) and their renderers (JSON lines, a tqdm bar).

The JSON line format is read by the Slicer module (slicer_support.parse_progress_line) and must not
change: ``{"stage": "batch", "done": 3, "total": 10, "case": "p04", "case_stage": "register",
"case_done": 2, "case_total": 4, "eta_s": 81.5}``.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Callable, Optional

from .summary import CaseResult


class Tracker:
    """Batch progress: cases done/total, the current case and stage, an ETA; renders through ``emit``."""

    def __init__(self, total: int, emit: Optional[Callable[[dict], None]]):
        self.total = total
        self.done = 0
        self.ran = 0  # cases that actually ran (not skipped): the basis of the ETA
        self.emit = emit
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def eta(self) -> Optional[float]:
        if self.ran == 0:
            return None
        rate = (time.monotonic() - self.t0) / self.ran
        return max(0.0, rate * (self.total - self.done))

    def event(self, case: Optional[str] = None, case_stage: Optional[str] = None,
              case_done: Optional[int] = None, case_total: Optional[int] = None) -> None:
        if self.emit is None:
            return
        ev = {"stage": "batch", "done": self.done, "total": self.total}
        if case is not None:
            ev["case"] = case
        if case_stage is not None:
            ev["case_stage"] = case_stage
            ev["case_done"] = case_done
            ev["case_total"] = case_total
        eta = self.eta()
        if eta is not None:
            ev["eta_s"] = round(eta, 1)
        with self.lock:
            self.emit(ev)

    def finished(self, res: CaseResult) -> None:
        self.done += 1
        if res.status != "skipped":
            self.ran += 1
        self.event(case=res.case_id, case_stage=res.status)


def json_events(stream=None) -> Callable[[dict], None]:
    def _emit(ev: dict) -> None:
        out = stream if stream is not None else sys.stderr
        out.write(json.dumps(ev) + "\n")
        out.flush()
    return _emit


def bar_events(stream=None) -> Callable[[dict], None]:
    """A tqdm bar over the cases; the postfix names the case that reported last and its stage."""
    from tqdm import tqdm

    state = {"bar": None, "t": 0.0}

    def _emit(ev: dict) -> None:
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=ev["total"], unit="case", file=stream if stream is not None else sys.stderr,
                                      dynamic_ncols=True, smoothing=0,
                                      bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} cases [{elapsed}]{postfix}")
        # ETA from the cases that actually ran (Tracker.eta): skipped cases do not make it optimistic
        eta = ev.get("eta_s")
        cur = "ETA --:--" if eta is None else f"ETA {int(eta // 60):02d}:{int(eta % 60):02d}"
        if "case" in ev:
            cur += f" {ev['case']}"
            if ev.get("case_stage"):
                cur += f": {ev['case_stage']}"
                if ev.get("case_total"):
                    cur += f" {ev['case_done']}/{ev['case_total']}"
        now = time.monotonic()
        changed = bar.n != ev["done"]
        bar.n = ev["done"]
        bar.set_postfix_str(cur, refresh=False)
        if changed or now - state["t"] >= 0.1:   # stage events can come hundreds a second
            bar.refresh()
            state["t"] = now
        if ev["done"] >= ev["total"]:
            bar.close()
            state["bar"] = None
    return _emit
