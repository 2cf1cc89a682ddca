"""The child process and its progress (Slicer-free, standard library only).

* :func:`parse_progress_line` and :class:`ProgressTracker` turn the core's JSON progress lines
  (``{"stage": "translate", "done": 7, "total": 18}`` on stderr) into a progress-bar value and a status line;
* :class:`CoreProcess` runs a command without blocking: reader threads and a queue that the GUI polls
  from a ``QTimer``; :meth:`CoreProcess.cancel` kills the whole process tree (``PythonSlicer`` is a
  launcher that starts the real interpreter as a grandchild).

The module's Logic uses a process only through this small interface, so a test can give it a fake
(``MultimodalRegistrationLogic.processFactory``): ``start() -> self``, ``poll() -> ProcessOutput``,
``cancel()``, ``is_running()``, and the attributes ``cancelled`` and ``error_message``.
"""
from __future__ import annotations

import json
import math
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from MultimodalRegistrationLib.contract import PROGRESS_STAGES


# ---------------------------------------------------------------------------------------------
# Progress lines
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    done: int
    total: int


def parse_progress_line(line: str) -> Optional[ProgressEvent]:
    """``{"stage": "translate", "done": 7, "total": 18}`` -> ProgressEvent; anything else -> None."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    stage, done, total = data.get("stage"), data.get("done"), data.get("total")
    if not isinstance(stage, str) or not stage:
        return None
    if isinstance(done, bool) or isinstance(total, bool):
        return None
    if not isinstance(done, (int, float)) or not isinstance(total, (int, float)):
        return None
    if not (math.isfinite(done) and math.isfinite(total)):
        return None
    return ProgressEvent(stage, int(done), int(total))


#: Rough share of the run time of each stage of :data:`PROGRESS_STAGES` (measured on the sample case on
#: a CPU, where the subset registration dominates).
STAGE_SHARES = {"load": 0.05, "translate": 0.10, "subsets": 0.05, "register": 0.40, "polish": 0.25,
                "resample": 0.05, "labels": 0.05, "write": 0.05}
#: The stages in run order with their share (sums to 1).
STAGE_WEIGHTS = tuple((stage, STAGE_SHARES[stage]) for stage in PROGRESS_STAGES)

STAGE_TEXT = {
    "load": "Loading volumes",
    "translate": "Converting ceT1 slices to synthetic T2",
    "subsets": "Building slice subsets",
    "register": "Registering",
    "polish": "Refining with mutual information",
    "resample": "Resampling",
    "labels": "Transferring labels",
    "write": "Writing results",
}


class ProgressTracker:
    """Overall fraction (0..1) and a status line from a stream of ProgressEvents.

    Stages the tracker knows are placed by STAGE_WEIGHTS; an unknown stage only changes the status
    text. The fraction never goes backwards.
    """

    def __init__(self, weights: Sequence[tuple[str, float]] = STAGE_WEIGHTS):
        total = sum(w for _, w in weights) or 1.0
        self._start = {}
        self._weight = {}
        acc = 0.0
        for name, w in weights:
            self._start[name] = acc / total
            self._weight[name] = w / total
            acc += w
        self.fraction = 0.0
        self.status = "Starting"

    def update(self, event: ProgressEvent) -> float:
        within = 0.0 if event.total <= 0 else min(1.0, max(0.0, event.done / event.total))
        if event.stage in self._start:
            value = self._start[event.stage] + self._weight[event.stage] * within
            self.fraction = max(self.fraction, min(1.0, value))
        label = STAGE_TEXT.get(event.stage, event.stage.capitalize())
        self.status = f"{label} ({event.done}/{event.total})" if event.total > 0 else label
        return self.fraction

    @property
    def percent(self) -> int:
        return int(round(100 * self.fraction))


# ---------------------------------------------------------------------------------------------
# Non-blocking child process
# ---------------------------------------------------------------------------------------------

@dataclass
class ProcessOutput:
    """What one :meth:`CoreProcess.poll` drained from the child."""
    progress: list = field(default_factory=list)   # ProgressEvent, in order
    log: list = field(default_factory=list)        # other lines, "stdout: ..." / "stderr: ..."
    finished: bool = False
    returncode: Optional[int] = None


class CoreProcess:
    """Run a command without blocking; poll its output from the GUI thread.

    Two reader threads put lines on a queue; :meth:`poll` drains it (call it from a ``QTimer``).
    The child gets its own process group/session so :meth:`cancel` can stop the launcher and the
    interpreter it started.
    """

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None):
        self.cmd = [str(c) for c in cmd]
        self.env = dict(env) if env is not None else None
        self.cwd = str(cwd) if cwd is not None else None
        self.proc: Optional[subprocess.Popen] = None
        self.cancelled = False
        self.returncode: Optional[int] = None
        self.stderr_lines: list[str] = []
        self._queue: "queue.Queue[tuple[str, Optional[str]]]" = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._open_streams = 0
        self._finished_reported = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "CoreProcess":
        if self.proc is not None:
            raise RuntimeError("process already started")
        kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                      env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
                      bufsize=1)
        if os.name == "nt":
            info = subprocess.STARTUPINFO()
            info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
            info.wShowWindow = 0  # hide the console window
            kwargs["startupinfo"] = info
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self.proc = subprocess.Popen(self.cmd, **kwargs)
        self._open_streams = 2
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            t = threading.Thread(target=self._reader, args=(name, stream), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _reader(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (ValueError, OSError):
            pass
        finally:
            self._queue.put((name, None))  # end of stream

    @property
    def pid(self) -> Optional[int]:
        return None if self.proc is None else self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> ProcessOutput:
        """Drain what the child wrote so far. ``finished`` is True once, when it has ended and
        both streams are closed."""
        out = ProcessOutput()
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._open_streams -= 1
                continue
            event = parse_progress_line(line) if name == "stderr" else None
            if event is not None:
                out.progress.append(event)
                continue
            if name == "stderr" and line.strip():
                self.stderr_lines.append(line)
                del self.stderr_lines[:-50]
            out.log.append(f"{name}: {line}")
        if self.proc is not None and self._open_streams <= 0 and not self._finished_reported:
            try:
                self.returncode = self.proc.wait(timeout=0.2)  # streams closed: it is exiting
            except subprocess.TimeoutExpired:
                return out
            self._finished_reported = True
            out.finished = True
            out.returncode = self.returncode
        return out

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05,
             on_output: Optional[Callable[[ProcessOutput], None]] = None) -> int:
        """Block until the child ends (for scripts and tests); returns the exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            out = self.poll()
            if on_output is not None and (out.progress or out.log or out.finished):
                on_output(out)
            if out.finished or self._finished_reported:
                return self.returncode
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"process did not finish within {timeout} s")
            time.sleep(interval)

    def cancel(self, grace: float = 2.0) -> None:
        """Stop the child and everything it started (terminate, then kill after ``grace`` s)."""
        self.cancelled = True
        if self.proc is None or self.proc.poll() is not None:
            self._kill_group(force=True)  # a grandchild may outlive the launcher
            return
        self._kill_group(force=False)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group(force=True)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def _kill_group(self, force: bool) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        if os.name == "nt":
            try:
                import psutil  # bundled with many Slicer installs; optional
                parent = psutil.Process(pid)
                for child in parent.children(recursive=True):
                    child.kill()
                parent.kill()
            except Exception:
                subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            return
        sig = signal.SIGKILL if force else signal.SIGTERM
        try:
            os.killpg(pid, sig)  # start_new_session=True: the group id is the child's pid
        except (ProcessLookupError, PermissionError):
            pass

    # -- results -----------------------------------------------------------------------------
    @property
    def error_message(self) -> str:
        """The core's one-line error (its last non-progress stderr line), or a generic text."""
        if self.cancelled:
            return "Cancelled by the user."
        for line in reversed(self.stderr_lines):
            text = line.strip()
            if text and not text.startswith("Traceback"):
                return text
        return f"the registration process exited with code {self.returncode}"
