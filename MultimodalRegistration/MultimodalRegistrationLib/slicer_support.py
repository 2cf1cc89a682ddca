"""Slicer-free helpers used by the Slicer module (``MultimodalRegistration.py``).

Everything here is plain Python (standard library; numpy only inside the metric functions) so it
can be unit-tested with pytest outside Slicer and imported by the module before the core's
heavier dependencies (torch, nibabel, ...) are installed.

What lives here:

* the choices shown in the panel (method, translator, device) and their CLI spelling;
* :func:`build_register_command`, the argument list of ``mmreg register`` (the module runs the
  core as a child process with Slicer's Python, as SlicerMONAIAuto3DSeg does, and never
  registers in-process);
* :func:`parse_progress_line` and :class:`ProgressTracker`, which turn the core's JSON progress
  lines (``{"stage": "translate", "done": 7, "total": 18}`` on stderr) into a progress-bar value
  and a status line;
* :class:`CoreProcess`, a non-blocking child-process runner (reader threads + a queue that the
  GUI polls from a ``QTimer``) whose :meth:`CoreProcess.cancel` kills the whole process tree
  (``PythonSlicer`` is a launcher that starts the real interpreter as a grandchild);
* readers/validators for the output contract (``transform.json``) and the small metrics used by
  the self-test (target registration error in mm, Dice per label).
"""
from __future__ import annotations

import enum
import json
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

# ---------------------------------------------------------------------------------------------
# Names fixed by the output contract (DESIGN.md) and by the sample case the core ships
# ---------------------------------------------------------------------------------------------

#: ``python -m`` target of the core's command line interface.
CLI_MODULE = "MultimodalRegistrationLib.cli"

#: Output files of ``mmreg register --out DIR`` (role -> file name).
OUTPUT_FILES = {
    "transform_json": "transform.json",
    "transform_tfm": "transform.tfm",
    "synth_t2": "coronal_synthT2.nii.gz",
    "cet1_on_axial": "coronal_ceT1_on_axial.nii.gz",
    "fused": "fused.nii.gz",
    "coronal_labels_on_axial": "coronal_labels_on_axial.nii.gz",
    "axial_labels_on_coronal": "axial_labels_on_coronal.nii.gz",
    "report_json": "report.json",
    "report_png": "report.png",
}

#: Keys every ``transform.json`` must have (the rest of the contract is optional for the module).
TRANSFORM_REQUIRED_KEYS = ("moving_to_fixed_ras", "method", "metric", "seconds", "success")

#: The bundled sample case (under ``MultimodalRegistration/Resources/SampleData/``).
SAMPLE_DATA_FOLDER = ("Resources", "SampleData")
SAMPLE_FILES = {
    "coronal": "sample_coronal_ceT1.nii.gz",
    "axial": "sample_axial_T2.nii.gz",
    "coronal_labels": "sample_coronal_labels.nii.gz",
    "axial_labels": "sample_axial_labels.nii.gz",
}
SAMPLE_GROUND_TRUTH = "sample_ground_truth.json"
SAMPLE_GROUND_TRUTH_KEY = "moving_to_fixed_ras"


# ---------------------------------------------------------------------------------------------
# Choices shown in the panel. The parameter node stores the enum member; the CLI gets ``.value``.
# ``label()`` is what parameterNodeWrapper's QComboBox connector shows.
# ---------------------------------------------------------------------------------------------

class Method(enum.Enum):
    SEARCH_CR = "search-cr"
    SEARCH_NCC = "search-ncc"
    PAPER = "paper"
    MI = "mi"

    def label(self) -> str:
        return {
            Method.SEARCH_CR: "Search + correlation ratio on the ceT1 (default)",
            Method.SEARCH_NCC: "Search + NCC on the synthetic T2",
            Method.PAPER: "Paper (greedy subset search, MSE)",
            Method.MI: "Mutual information baseline (SimpleITK)",
        }[self]


class Translator(enum.Enum):
    DEFAULT = "default"
    FILE = "file"
    NONE = "none"

    def label(self) -> str:
        return {
            Translator.DEFAULT: "Bundled NICE-GAN checkpoint",
            Translator.FILE: "Checkpoint file (.safetensors)",
            Translator.NONE: "None (register ceT1 directly)",
        }[self]


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return {Device.AUTO: "Automatic", Device.CPU: "CPU", Device.CUDA: "CUDA (GPU)"}[self]


class LabelMode(enum.Enum):
    LINEAR = "linear"
    NEAREST = "nearest"

    def label(self) -> str:
        return {LabelMode.LINEAR: "Per-label linear + argmax", LabelMode.NEAREST: "Nearest neighbour"}[self]


def _enum_value(enum_cls, value) -> str:
    """Accept an enum member or its CLI string; return the CLI string (ValueError otherwise)."""
    if isinstance(value, enum_cls):
        return value.value
    allowed = [m.value for m in enum_cls]
    if isinstance(value, str) and value in allowed:
        return value
    raise ValueError(f"{enum_cls.__name__.lower()} must be one of {allowed}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Command line of the child process
# ---------------------------------------------------------------------------------------------

def build_register_command(
    python: str,
    coronal: str | os.PathLike,
    axial: str | os.PathLike,
    out_dir: str | os.PathLike,
    coronal_labels: str | os.PathLike | None = None,
    axial_labels: str | os.PathLike | None = None,
    method: Method | str = Method.SEARCH_CR,
    translator: Translator | str = Translator.DEFAULT,
    translator_file: str | os.PathLike | None = None,
    device: Device | str = Device.AUTO,
    seed: Optional[int] = None,
    label_mode: LabelMode | str = LabelMode.LINEAR,
    method_params: str | Sequence[str] | None = None,
    debug: bool = False,
) -> list[str]:
    """Argument list of ``<python> -m MultimodalRegistrationLib.cli [--debug] register ...``.

    ``translator`` FILE needs ``translator_file`` (a ``.safetensors`` path, passed as the value of
    ``--translator``). ``method_params`` is ``"lr0=4 iterations=30"`` (or a list of ``KEY=VALUE``),
    each passed as ``--param KEY=VALUE``. ``--debug`` is an option of ``mmreg`` itself, so it goes
    before the subcommand. Progress is always requested as JSON lines.
    """
    if not python:
        raise ValueError("no Python executable given (PythonSlicer not found?)")
    for name, value in (("coronal", coronal), ("axial", axial), ("out_dir", out_dir)):
        if value is None or str(value) == "":
            raise ValueError(f"{name} is required")
    translator_value = _enum_value(Translator, translator)
    if translator_value == Translator.FILE.value:
        if not translator_file or str(translator_file) in ("", "."):
            raise ValueError("choose a translator checkpoint file (.safetensors)")
        translator_arg = str(translator_file)
    else:
        translator_arg = translator_value

    params = parse_method_params(method_params)
    cmd = [str(python), "-m", CLI_MODULE] + (["--debug"] if debug else []) + [
        "register",
        "--coronal", str(coronal),
        "--axial", str(axial),
        "--out", str(out_dir),
    ]
    if coronal_labels:
        cmd += ["--coronal-labels", str(coronal_labels)]
    if axial_labels:
        cmd += ["--axial-labels", str(axial_labels)]
    cmd += [
        "--method", _enum_value(Method, method),
        "--translator", translator_arg,
        "--device", _enum_value(Device, device),
        "--label-mode", _enum_value(LabelMode, label_mode),
        "--progress", "json",
    ]
    if seed is not None:
        cmd += ["--seed", str(int(seed))]
    for item in params:
        cmd += ["--param", item]
    return cmd


def parse_method_params(text: str | Sequence[str] | None) -> list[str]:
    """``"lr0=4, iterations=30"`` -> ``["lr0=4", "iterations=30"]`` (ValueError on a bad item)."""
    if text is None:
        return []
    if isinstance(text, str):
        items = re.sub(r"\s*=\s*", "=", text).replace(",", " ").replace(";", " ").split()
    else:
        items = list(text)
    out = []
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"method parameters are KEY=VALUE items, got {item!r}")
        out.append(f"{key.strip()}={value.strip()}")
    return out


def child_environment(module_dir: str | os.PathLike, base_env: Mapping[str, str] | None = None) -> dict:
    """Environment for the child: ``module_dir`` first on PYTHONPATH, unbuffered output."""
    env = dict(os.environ if base_env is None else base_env)
    parts = [str(module_dir)]
    if env.get("PYTHONPATH"):
        parts += [p for p in env["PYTHONPATH"].split(os.pathsep) if p and p != str(module_dir)]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


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


#: Pipeline stages in order, with a rough share of the run time (sums to 1; measured on the
#: sample case on a CPU, where the subset registration dominates).
STAGE_WEIGHTS = (
    ("load", 0.05),
    ("translate", 0.10),
    ("subsets", 0.05),
    ("register", 0.40),
    ("polish", 0.25),
    ("resample", 0.05),
    ("labels", 0.05),
    ("write", 0.05),
)

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


# ---------------------------------------------------------------------------------------------
# Output contract
# ---------------------------------------------------------------------------------------------

class OutputError(RuntimeError):
    """An output of the core is missing or does not follow the contract."""


def read_transform_json(path: str | os.PathLike) -> dict:
    """Read and check ``transform.json``; returns the dict with the matrix as a 4x4 list of floats."""
    p = Path(path)
    if not p.is_file():
        raise OutputError(f"missing {p.name} in {p.parent}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise OutputError(f"{p.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise OutputError(f"{p.name} must hold a JSON object")
    missing = [k for k in TRANSFORM_REQUIRED_KEYS if k not in data]
    if missing:
        raise OutputError(f"{p.name} lacks {', '.join(missing)}")
    data["moving_to_fixed_ras"] = check_matrix4x4(data["moving_to_fixed_ras"], p.name)
    return data


def check_matrix4x4(matrix, what: str = "matrix") -> list:
    """A finite homogeneous 4x4 matrix (last row 0 0 0 1) as nested lists of float."""
    try:
        rows = [[float(v) for v in row] for row in matrix]
    except (TypeError, ValueError) as exc:
        raise OutputError(f"{what}: moving_to_fixed_ras must be a 4x4 list of numbers") from exc
    if len(rows) != 4 or any(len(r) != 4 for r in rows):
        raise OutputError(f"{what}: moving_to_fixed_ras must be 4x4")
    if not all(math.isfinite(v) for r in rows for v in r):
        raise OutputError(f"{what}: moving_to_fixed_ras has non-finite values")
    if any(abs(a - b) > 1e-6 for a, b in zip(rows[3], (0.0, 0.0, 0.0, 1.0))):
        raise OutputError(f"{what}: last row of moving_to_fixed_ras must be 0 0 0 1")
    return rows


def expected_outputs(with_coronal_labels: bool, with_axial_labels: bool) -> list[str]:
    """File names the module needs after a successful run."""
    names = [OUTPUT_FILES["transform_json"], OUTPUT_FILES["synth_t2"]]
    if with_coronal_labels:
        names.append(OUTPUT_FILES["coronal_labels_on_axial"])
    if with_axial_labels:
        names.append(OUTPUT_FILES["axial_labels_on_coronal"])
    return names


def missing_outputs(out_dir: str | os.PathLike, with_coronal_labels: bool,
                    with_axial_labels: bool) -> list[str]:
    d = Path(out_dir)
    return [n for n in expected_outputs(with_coronal_labels, with_axial_labels)
            if not (d / n).is_file()]


def subset_curve(result: Mapping) -> tuple[list[int], list[float]]:
    """(subset index, metric) pairs from ``transform.json``'s optional ``subset_metrics``."""
    values = result.get("subset_metrics") or []
    xs, ys = [], []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            xs.append(i)
            ys.append(f)
    return xs, ys


#: What ``metric`` of transform.json measures, by the ``method`` the core reports: the default
#: method's NCC between synthetic T2 and T2 (higher is better), or SimpleITK's negative Mattes mutual
#: information when the MI polish replaced that result (``ours+mi-polish``) and for the MI baseline
#: (lower is better); the paper's search minimises the MSE between synthetic T2 and T2.
METRIC_NAMES = {
    "search-cr": "correlation ratio",
    "search-cr+mi-polish": "negative Mattes MI",
    "search-ncc": "NCC",
    "search-ncc+mi-polish": "negative Mattes MI",
    "ours": "NCC",
    "ours+mi-polish": "negative Mattes MI",
    "paper": "MSE",
    "mi": "negative Mattes MI",
}


def metric_name(result: Mapping) -> str:
    """``metric_name`` from transform.json if the core gives one, else by method."""
    return str(result.get("metric_name") or METRIC_NAMES.get(str(result.get("method")), "metric"))


def format_metrics(result: Mapping) -> str:
    """One line for the panel: final metric (named), the core's success-threshold test, run time,
    method, chosen subset."""
    parts = []
    metric = result.get("metric")
    if isinstance(metric, (int, float)) and math.isfinite(metric):
        parts.append(f"final {metric_name(result)} {metric:.4g}")
    # ``success`` is the core's threshold test on the final metric, not an optimiser convergence flag
    if result.get("success") is None:
        parts.append("success unknown (no calibrated check for this result)")
    elif (result.get("confidence") or {}).get("rule") == "forward/backward agreement":
        c = result["confidence"]
        parts.append(f"forward/backward agree to {c.get('consistency_mm', float('nan')):.1f} mm "
                     + ("(passes)" if result.get("success") else "(flagged)"))
    else:
        parts.append("metric within the success threshold" if result.get("success")
                     else "metric outside the success threshold (flagged)")
    seconds = result.get("seconds")
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        parts.append(f"{seconds:.1f} s")
    if result.get("method"):
        parts.append(f"method {result['method']}")
    if result.get("subset_index") is not None:
        parts.append(f"subset {result['subset_index']}")
    if result.get("translator"):
        parts.append(f"translator {result['translator']}")
    return " | ".join(parts)


def completion_status(result: Mapping, seconds: float) -> str:
    """Status line after a run: time, a warning when the core flagged the result, its notes."""
    text = f"Done in {seconds:.0f} s."
    if result.get("success") is None:
        text += " The core could not check this result: review the fused view before using it."
    elif not result.get("success"):
        text += " The core flagged this result as unsuccessful: check the report before using it."
    for key in ("translator_note", "note"):
        if result.get(key):
            text += f" {result[key]}"
    return text


# ---------------------------------------------------------------------------------------------
# Python requirements (checked here; installed by slicer.packaging >= 5.12 or slicer.util.pip_install)
# ---------------------------------------------------------------------------------------------

def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file (no comments, no pip options)."""
    reqs = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(line)
    return reqs


def missing_requirements(requirements: Iterable[str],
                         version_of: Optional[Callable[[str], str]] = None) -> list[str]:
    """Requirements not satisfied by the installed distributions.

    Uses ``packaging`` (shipped with Slicer and pip) for the version check; without it, only
    presence is checked.
    """
    if version_of is None:
        from importlib.metadata import PackageNotFoundError, version

        def version_of(name):
            try:
                return version(name)
            except PackageNotFoundError:
                return None
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging is everywhere we run
        Requirement = None
    missing = []
    for req in requirements:
        if Requirement is not None:
            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate():
                continue
            installed = version_of(r.name)
            if installed is None or (r.specifier and not r.specifier.contains(installed, prereleases=True)):
                missing.append(req)
        else:
            name = req.split(";")[0].split("[")[0]
            for op in ("==", ">=", "<=", "~=", "!=", ">", "<"):
                name = name.split(op)[0]
            if version_of(name.strip()) is None:
                missing.append(req)
    return missing


# ---------------------------------------------------------------------------------------------
# Metrics for the self-test (numpy imported lazily)
# ---------------------------------------------------------------------------------------------

def box_corners_ras(ijk_to_ras, shape_ijk) -> list:
    """The 8 corner voxel centres and the centre of a volume, in RAS mm."""
    import numpy as np

    m = np.asarray(ijk_to_ras, dtype=float)
    ni, nj, nk = (int(s) for s in shape_ijk[:3])
    pts = [(i, j, k) for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)]
    pts.append(((ni - 1) / 2.0, (nj - 1) / 2.0, (nk - 1) / 2.0))
    ijk = np.c_[np.asarray(pts, dtype=float), np.ones(len(pts))]
    return (ijk @ m.T)[:, :3].tolist()


def tre_mm(estimated, truth, points_ras) -> dict:
    """Target registration error between two moving->fixed RAS matrices at the given points."""
    import numpy as np

    est = np.asarray(estimated, dtype=float)
    tru = np.asarray(truth, dtype=float)
    p = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    ph = np.c_[p, np.ones(len(p))]
    d = np.linalg.norm((ph @ est.T)[:, :3] - (ph @ tru.T)[:, :3], axis=1)
    return {"mean": float(d.mean()), "max": float(d.max()), "per_point": d.tolist()}


def dice_per_label(a, b, labels: Optional[Iterable[int]] = None) -> dict:
    """Dice coefficient per non-zero label of two label arrays on the same grid.

    Labels absent from both arrays are left out; a label present in only one scores 0.
    """
    import numpy as np

    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    if labels is None:
        labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    scores = {}
    for lab in labels:
        ma, mb = a == lab, b == lab
        denom = int(ma.sum()) + int(mb.sum())
        if denom == 0:
            continue
        scores[int(lab)] = 2.0 * float(np.logical_and(ma, mb).sum()) / denom
    return scores


# ---------------------------------------------------------------------------------------------
# Label maps on their image's grid (numpy imported lazily)
# ---------------------------------------------------------------------------------------------

def same_grid(shape_a, ijk_to_ras_a, shape_b, ijk_to_ras_b, tol_mm: float = 1e-3) -> bool:
    """Whether two volumes share a voxel grid: same dimensions and IJK-to-RAS matrices that place
    every voxel centre within ``tol_mm`` of the other's (checked at the corners)."""
    if tuple(int(s) for s in shape_a[:3]) != tuple(int(s) for s in shape_b[:3]):
        return False
    a = box_corners_ras(ijk_to_ras_a, shape_a)
    b = box_corners_ras(ijk_to_ras_b, shape_b)
    return all(math.dist(p, q) <= tol_mm for p, q in zip(a, b))


def resample_labels_nearest(labels_kji, labels_ijk_to_ras, reference_shape_ijk, reference_ijk_to_ras):
    """A label array (Slicer's KJI order) moved onto another grid by nearest neighbour.

    Both grids are taken in the same RAS frame (no transform between them); voxels of the
    reference grid outside the label grid get 0. Label values are kept as they are. Returns a KJI
    array of the reference shape with the labels' dtype."""
    import numpy as np

    src = np.asarray(labels_kji)
    ni, nj, nk = (int(s) for s in reference_shape_ijk[:3])
    ref_to_src = np.linalg.inv(np.asarray(labels_ijk_to_ras, dtype=float)) @ np.asarray(reference_ijk_to_ras, dtype=float)
    out = np.zeros((nk, nj, ni), dtype=src.dtype)
    sk, sj, si = src.shape
    jj, ii = np.meshgrid(np.arange(nj, dtype=float), np.arange(ni, dtype=float), indexing="ij")
    for k in range(nk):  # one reference slice at a time keeps the index arrays small
        pts = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, float(k)), np.ones(ii.size)])
        s_i, s_j, s_k = (np.rint(ref_to_src[r] @ pts).astype(np.int64) for r in range(3))
        inside = (s_i >= 0) & (s_i < si) & (s_j >= 0) & (s_j < sj) & (s_k >= 0) & (s_k < sk)
        plane = np.zeros(ii.size, dtype=src.dtype)
        plane[inside] = src[s_k[inside], s_j[inside], s_i[inside]]
        out[k] = plane.reshape(nj, ni)
    return out
