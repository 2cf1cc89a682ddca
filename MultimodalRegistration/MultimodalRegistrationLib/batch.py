"""``mmreg batch``: register many cases, resumably, in parallel, with a ``summary.csv``.

Input is a manifest CSV or a folder laid out by the documented naming scheme (docs/BATCH.md).
Every case writes the output contract of ``mmreg register`` under ``OUT/<case id>/``.

Reliability rules (docs/BATCH.md explains them for users):

* A case runs in a staging folder ``OUT/.mmreg_staging/<id>/`` and is renamed to ``OUT/<id>/`` only
  after every output *and* the completion marker ``.mmreg_done.json`` exist, so ``OUT/<id>/`` never
  holds a half-written case. The marker holds the SHA-256 of the input files' bytes, the parameters
  and the tool version; a re-run skips cases whose marker matches and re-runs (after removing the
  stale folder) those whose marker is missing or differs.
* One failing case never stops the batch: Python errors are caught per case, a worker process that
  dies (out of memory, segfault) fails only the cases it was running; the rest go on.
* ``summary.csv`` is rewritten atomically after every case.
* Exit code: 0 when every case finished (a registration flagged unsuccessful still counts as
  finished, with ``success=False``), 1 when some cases failed, 2 for a usage/manifest error,
  130 when interrupted (re-run the same command to resume).
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import __version__
from .errors import InputError, MMRegError
from .volume import atomic_write

MARKER = ".mmreg_done.json"
SUMMARY = "summary.csv"
STAGING = ".mmreg_staging"
LOGS = ".mmreg_logs"
LOCK = ".mmreg_batch.lock"
ROLES = ("coronal", "axial", "coronal_labels", "axial_labels")
REQUIRED_ROLES = ("coronal", "axial")
SUMMARY_COLUMNS = ("case_id", "status", "success", "metric", "seconds", "error", "warnings", "out_dir")

#: Folder naming scheme: file names (first match wins) for each role inside FOLDER/<case id>/, or
#: prefixed with ``<case id>_`` directly inside FOLDER (flat layout).
FOLDER_NAMES = {
    "coronal": ("coronal_ceT1", "coronal"),
    "axial": ("axial_T2", "axial"),
    "coronal_labels": ("coronal_labels",),
    "axial_labels": ("axial_labels",),
}
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Manifest column aliases (lower-case) -> role.
COLUMN_ALIASES = {
    "case_id": "case_id", "id": "case_id", "case": "case_id",
    "coronal": "coronal", "coronal_cet1": "coronal", "moving": "coronal",
    "axial": "axial", "axial_t2": "axial", "fixed": "axial",
    "coronal_labels": "coronal_labels", "axial_labels": "axial_labels",
}

CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_RESERVED_IDS = {SUMMARY.lower(), "summary"}

#: Memory model for --jobs (docs/BATCH.md): a worker needs a fixed base (Python, torch, the GAN)
#: plus a multiple of the float32 size of its inputs (copies, resampled volumes, the fused volume).
BASE_WORKER_BYTES = 700 * 1024**2
BYTES_FACTOR = 12


class ManifestError(InputError):
    """The manifest or the input folder is unusable (exit code 2, nothing is run)."""


# ----------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    case_id: str
    coronal: Path
    axial: Path
    coronal_labels: Optional[Path] = None
    axial_labels: Optional[Path] = None

    def __post_init__(self) -> None:
        for role in ROLES:
            v = getattr(self, role)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, role, Path(v))

    def inputs(self) -> dict:
        """role -> Path for the inputs that are given."""
        return {r: getattr(self, r) for r in ROLES if getattr(self, r) is not None}


@dataclass
class CaseResult:
    case_id: str
    status: str                      # done | skipped (finished earlier) | failed | pending
    success: Optional[bool] = None   # the registration's own success flag
    metric: Optional[float] = None
    seconds: Optional[float] = None
    error: str = ""
    warnings: str = ""
    out_dir: str = ""


def validate_case_id(case_id: str, where: str = "") -> str:
    """Refuses ids that could escape OUT or misbehave as folder names (.., /, absolute, odd characters)."""
    cid = case_id.strip() if isinstance(case_id, str) else case_id
    at = f" ({where})" if where else ""
    if not isinstance(cid, str) or not cid:
        raise ManifestError(f"empty case id{at}")
    if not CASE_ID_RE.match(cid) or cid in (".", ".."):
        raise ManifestError(
            f"case id {cid!r}{at} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (no paths, '..', spaces or other characters)")
    stem = cid.split(".")[0].lower()
    if cid.lower() in _RESERVED_IDS or stem in _WINDOWS_RESERVED:
        raise ManifestError(f"case id {cid!r}{at} is a reserved name")
    return cid


def _resolve_input(value: str, base: Path, what: str) -> Path:
    p = Path(os.path.expanduser(value.strip()))
    if not p.is_absolute():
        p = base / p
    return Path(os.path.abspath(p))


def read_manifest(path) -> list[Case]:
    """Reads a manifest CSV: a header with case_id, coronal, axial [, coronal_labels, axial_labels].

    Relative paths are relative to the manifest's folder. Blank lines and lines starting with '#'
    are ignored; an empty label cell means "no labels".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"manifest '{path}' is not a UTF-8 text file") from None
    except OSError as exc:
        raise ManifestError(f"manifest '{path}' cannot be read ({exc.strerror or exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ManifestError(f"manifest '{path}' has no header and no cases")
    try:
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
    except csv.Error as exc:
        raise ManifestError(f"manifest '{path}' is not valid CSV ({exc})") from None
    header = [h.strip().lower() for h in rows[0]]
    roles = []
    for h in header:
        if h not in COLUMN_ALIASES:
            raise ManifestError(f"manifest '{path}': unknown column {h!r}; expected case_id, coronal, axial, "
                                f"coronal_labels, axial_labels")
        roles.append(COLUMN_ALIASES[h])
    if len(set(roles)) != len(roles):
        raise ManifestError(f"manifest '{path}': a column appears twice in the header")
    for need in ("case_id", *REQUIRED_ROLES):
        if need not in roles:
            raise ManifestError(f"manifest '{path}': the header lacks a {need!r} column")
    base = path.resolve().parent
    cases = []
    for n, row in enumerate(rows[1:], start=2):
        where = f"manifest '{path.name}' row {n}"
        if len(row) != len(roles):
            raise ManifestError(f"{where} has {len(row)} cells, the header has {len(roles)}")
        cells = dict(zip(roles, row))
        cid = validate_case_id(cells["case_id"], where)
        kw = {}
        for role in ROLES:
            v = (cells.get(role) or "").strip()
            if not v:
                if role in REQUIRED_ROLES:
                    raise ManifestError(f"{where} (case {cid!r}) has no {role} path")
                continue
            kw[role] = _resolve_input(v, base, role)
        cases.append(Case(cid, **kw))
    if not cases:
        raise ManifestError(f"manifest '{path}' lists no cases")
    return cases


def _find_role(folder: Path, role: str, prefix: str = "") -> Optional[Path]:
    for stem in FOLDER_NAMES[role]:
        for suf in NIFTI_SUFFIXES:
            p = folder / f"{prefix}{stem}{suf}"
            if p.is_file():
                return p
    return None


def scan_folder(folder) -> list[Case]:
    """Finds cases in a folder by the naming scheme of docs/BATCH.md.

    * sub-folder layout: ``FOLDER/<id>/coronal_ceT1.nii.gz``, ``axial_T2.nii.gz`` [,
      ``coronal_labels.nii.gz``, ``axial_labels.nii.gz``] (what ``mmreg simulate`` writes);
    * flat layout: ``FOLDER/<id>_coronal_ceT1.nii.gz``, ``FOLDER/<id>_axial_T2.nii.gz``, ...

    ``coronal``/``axial`` are accepted as stems too, ``.nii`` as well as ``.nii.gz``. Sub-folders
    without a coronal and an axial file are skipped; one with only one of them is an error.
    """
    folder = Path(folder)
    cases: dict[str, Case] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = {r: _find_role(sub, r) for r in ROLES}
        if found["coronal"] is None and found["axial"] is None:
            continue
        cid = validate_case_id(sub.name, f"folder '{sub}'")
        for r in REQUIRED_ROLES:
            if found[r] is None:
                raise ManifestError(f"case folder '{sub}' has no {r} file (expected {FOLDER_NAMES[r][0]}.nii.gz)")
        cases[cid] = Case(cid, **{r: Path(os.path.abspath(p)) for r, p in found.items() if p is not None})
    # flat layout
    pat = re.compile(r"^(?P<id>.+?)_(?P<stem>%s)(?:\.nii\.gz|\.nii)$" % "|".join(
        re.escape(s) for r in ROLES for s in FOLDER_NAMES[r]))
    ids = sorted({m.group("id") for f in folder.iterdir() if f.is_file() and (m := pat.match(f.name))})
    for raw in ids:
        cid = validate_case_id(raw, f"file prefix in '{folder}'")
        if cid in cases:
            raise ManifestError(f"case {cid!r} is in '{folder}' both as a sub-folder and as prefixed files")
        found = {r: _find_role(folder, r, prefix=f"{raw}_") for r in ROLES}
        for r in REQUIRED_ROLES:
            if found[r] is None:
                raise ManifestError(f"case {cid!r} in '{folder}' has no {raw}_{FOLDER_NAMES[r][0]}.nii.gz")
        cases[cid] = Case(cid, **{r: Path(os.path.abspath(p)) for r, p in found.items() if p is not None})
    if not cases:
        raise ManifestError(f"no cases found in folder '{folder}' (see docs/BATCH.md for the naming scheme)")
    return [cases[k] for k in sorted(cases)]


def load_cases(source) -> list[Case]:
    """A manifest CSV or a folder -> cases."""
    source = Path(source)
    if source.is_dir():
        return scan_folder(source)
    if not source.exists():
        raise ManifestError(f"manifest or folder '{source}' does not exist")
    return read_manifest(source)


def _is_within(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def check_cases(cases: list[Case], out: Path) -> None:
    """Batch-level checks: unique ids (case-insensitively), no input inside OUT (it could be deleted)."""
    seen: dict[str, str] = {}
    for c in cases:
        key = c.case_id.lower()
        if key in seen:
            raise ManifestError(f"case id {c.case_id!r} appears twice (ids are compared ignoring case)")
        seen[key] = c.case_id
        dest = out / c.case_id
        if not _is_within(dest, out) or dest.resolve() == out.resolve():
            raise ManifestError(f"case id {c.case_id!r} would write outside the output folder")
        for role, p in c.inputs().items():
            if _is_within(p, out):
                raise ManifestError(f"case {c.case_id!r}: {role} input '{p}' lies inside the output folder "
                                    f"'{out}'; batch outputs may replace it. Move the inputs or pick another --out")


# ----------------------------------------------------------------------------- hashing and markers

def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:  # inputs are only ever opened for reading
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def params_dict(params) -> dict:
    if params is None:
        return {}
    if hasattr(params, "to_dict"):
        return params.to_dict()
    if dataclasses.is_dataclass(params):
        return dataclasses.asdict(params)
    return dict(params)


def case_hash(case: Case, params, version: str = __version__) -> tuple[str, dict]:
    """(hex digest, {role: sha256}) over the input files' bytes, the parameters and the tool version.

    Paths are not hashed: moving the inputs does not re-run a case, changing a byte does.
    """
    digests = {}
    for role, p in case.inputs().items():
        try:
            digests[role] = file_sha256(p)
        except FileNotFoundError:
            digests[role] = "missing"
        except OSError as exc:
            digests[role] = f"unreadable:{exc.errno}"
    blob = json.dumps({"inputs": digests, "params": params_dict(params), "version": version},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), digests


def read_marker(case_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(case_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def finished_marker(case_dir: Path, expected_hash: str) -> Optional[dict]:
    """The marker of a finished case folder matching ``expected_hash``, else None.

    Finished means: the marker exists and parses, its hash matches, and every output it lists is
    still there with the recorded size and SHA-256 (a deleted, truncated or edited output makes the
    case re-run; markers written before output hashes were recorded are checked by size).
    """
    m = read_marker(case_dir)
    if not m or m.get("hash") != expected_hash:
        return None
    digests = m.get("output_sha256") or {}
    for name, size in (m.get("outputs") or {}).items():
        p = Path(case_dir) / name
        try:
            if p.stat().st_size != size:
                return None
            if name in digests and file_sha256(p) != digests[name]:
                return None
        except OSError:
            return None
    return m


def _rmtree(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)


# ----------------------------------------------------------------------------- one case (worker side)

@dataclass
class Task:
    case: Case
    out: Path
    params: object
    hash: str
    digests: dict
    run_case: Optional[Callable] = None
    threads: Optional[int] = None


_WORKER_QUEUE = None


def set_threads(threads: int) -> Optional[int]:
    """Limits torch (and SimpleITK) to ``threads`` threads; returns torch's previous setting.

    The thread count changes the order of floating-point reductions, hence the last bits of a
    result: runs are bit-identical only for the same thread count (docs/BATCH.md).
    """
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


def _worker_init(threads: int, queue) -> None:
    """Runs once in each worker process: limit threads, remember the progress queue."""
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(threads)
    set_threads(threads)
    try:
        import torch
        torch.set_num_interop_threads(1)
    except (ImportError, RuntimeError):
        pass


def _worker_task(task: Task) -> CaseResult:
    q = _WORKER_QUEUE

    def emit(kind, *payload):
        if q is not None:
            try:
                q.put((kind, task.case.case_id, *payload))
            except Exception:
                pass

    return run_one(task, emit)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_one(task: Task, emit: Callable = lambda *a: None) -> CaseResult:
    """Runs one case into its staging folder and moves it into place (called in a worker or in-process).

    Python exceptions become a failed :class:`CaseResult`; KeyboardInterrupt propagates.
    """
    case, out = task.case, Path(task.out)
    cid = case.case_id
    final = out / cid
    staging_root = out / STAGING
    staging = staging_root / cid
    # The staging folder is created first: a worker that dies leaves it behind, which is how the
    # parent knows this case had started (see _run_pool).
    _rmtree(staging)
    staging.mkdir(parents=True)
    emit("start")
    t0 = time.perf_counter()
    # A stale or half-finished folder of this case must not survive next to the new run.
    if final.exists() or final.is_symlink():
        stale = staging_root / ".stale" / cid  # ids never start with '.': no clash with a staging folder
        _rmtree(stale)
        stale.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, stale)
        _rmtree(stale)
    work = staging / "out"
    run_case = task.run_case
    if run_case is None:
        from .pipeline import run_case
    inp = case.inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = run_case(
                str(inp["coronal"]), str(inp["axial"]), str(work),
                coronal_labels=str(inp["coronal_labels"]) if "coronal_labels" in inp else None,
                axial_labels=str(inp["axial_labels"]) if "axial_labels" in inp else None,
                params=task.params, progress=lambda stage, done, total: emit("stage", stage, int(done), int(total)))
            if not isinstance(transform, dict):
                raise TypeError(f"run_case returned {type(transform).__name__}, not a dict")
        except Exception as exc:
            seconds = time.perf_counter() - t0
            msg = str(exc) if isinstance(exc, MMRegError) else f"internal error: {type(exc).__name__}: {exc}"
            _write_log(out, cid, traceback.format_exc())
            _rmtree(staging)
            return CaseResult(cid, "failed", error=_one_line(msg), seconds=round(seconds, 3),
                              warnings=_warn_text(caught))
    seconds = time.perf_counter() - t0
    emit("stage", "finish", 0, 1)
    outputs = {}
    if work.exists():
        for p in sorted(work.rglob("*")):
            if p.is_file() and ".part" not in p.name:
                outputs[str(p.relative_to(work))] = p.stat().st_size
    if not outputs:
        _rmtree(staging)
        return CaseResult(cid, "failed", error="internal error: the pipeline wrote no outputs",
                          seconds=round(seconds, 3))
    success = bool(transform.get("success", False))
    metric = transform.get("metric")
    marker = {
        "hash": task.hash, "version": __version__, "params": params_dict(task.params),
        "inputs": {r: {"path": str(p), "sha256": task.digests.get(r)} for r, p in inp.items()},
        "outputs": outputs, "output_sha256": {n: file_sha256(work / n) for n in outputs},
        "success": success, "metric": metric, "seconds": round(seconds, 3),
        "threads": task.threads,
        "warnings": _warn_text(caught),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # The marker is written last (atomically), then the whole folder is renamed into place.
    atomic_write(work / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(marker, indent=2, default=str)),
                 suffix=".json")
    if final.exists():  # a concurrent writer? never expected (the batch holds a lock)
        _rmtree(final)
    os.replace(work, final)
    _rmtree(staging)
    (out / LOGS / f"{cid}.log").unlink(missing_ok=True)
    emit("stage", "finish", 1, 1)
    return CaseResult(cid, "done", success=success, metric=None if metric is None else float(metric),
                      seconds=round(seconds, 3), warnings=_warn_text(caught), out_dir=str(final))


def _warn_text(caught) -> str:
    seen = []
    for w in caught or []:
        s = _one_line(str(w.message))
        if s not in seen:
            seen.append(s)
    return "; ".join(seen)


def _write_log(out: Path, cid: str, text: str) -> None:
    try:
        atomic_write(out / LOGS / f"{cid}.log", lambda tmp: Path(tmp).write_text(text), suffix=".log")
    except OSError:
        pass


# ----------------------------------------------------------------------------- resources

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


# ----------------------------------------------------------------------------- progress (parent side)

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


def bar_events(stream=None, width: int = 24) -> Callable[[dict], None]:
    """A one-line bar on a terminal (redrawn with '\\r'), one line per event otherwise."""
    def _emit(ev: dict) -> None:
        out = stream if stream is not None else sys.stderr
        frac = ev["done"] / ev["total"] if ev["total"] else 1.0
        filled = int(round(frac * width))
        eta = ev.get("eta_s")
        eta_s = "--:--" if eta is None else f"{int(eta // 60):02d}:{int(eta % 60):02d}"
        cur = ""
        if "case" in ev:
            cur = f" {ev['case']}"
            if ev.get("case_stage"):
                cur += f": {ev['case_stage']}"
                if ev.get("case_total"):
                    cur += f" {ev['case_done']}/{ev['case_total']}"
        line = f"[{'#' * filled}{'.' * (width - filled)}] {ev['done']}/{ev['total']} cases, ETA {eta_s}{cur}"
        tty = getattr(out, "isatty", lambda: False)()
        if tty:
            out.write("\r" + line[:120].ljust(120))
            if ev["done"] >= ev["total"]:
                out.write("\n")
        else:
            out.write(line + "\n")
        out.flush()
    return _emit


# ----------------------------------------------------------------------------- summary

def write_summary(out: Path, cases: list[Case], results: dict) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for c in cases:
        r = results.get(c.case_id) or CaseResult(c.case_id, "pending")
        w.writerow([r.case_id, r.status, "" if r.success is None else str(bool(r.success)).lower(),
                    "" if r.metric is None else f"{r.metric:.8g}",
                    "" if r.seconds is None else f"{r.seconds:.3f}", r.error, r.warnings, r.out_dir])
    text = buf.getvalue()
    return atomic_write(out / SUMMARY, lambda tmp: Path(tmp).write_text(text), suffix=".csv")


def read_summary(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the batch

class _Lock:
    """An exclusive advisory lock on OUT (two batches writing one folder would corrupt each other)."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self.f = None

    def __enter__(self):
        self.f = open(self.path, "a+")
        try:
            import fcntl
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            self.f.close()
            raise MMRegError(f"another 'mmreg batch' is writing into '{self.path.parent}'; wait for it to finish")
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()


def run_batch(cases: list[Case], out, params=None, *, jobs: int = 1, run_case: Optional[Callable] = None,
              progress: Optional[Callable[[dict], None]] = None, force: bool = False,
              note: Optional[Callable[[str], None]] = None, threads: Optional[int] = None,
              case_timeout: Optional[float] = None) -> list[CaseResult]:
    """Runs every case (skipping those already finished with the same hash) and writes summary.csv.

    ``run_case`` (default :func:`pipeline.run_case`) must be a module-level function when jobs > 1
    (it is pickled to spawned workers). ``progress`` receives event dicts (see :class:`Tracker`);
    ``note`` one-line notices (e.g. --jobs lowered to fit the memory). ``threads``: torch threads
    per case (default: cores // jobs); with jobs == 1 the cases run in this process, whose torch
    thread count is set for the batch and restored afterwards. ``case_timeout`` (seconds): a case
    still running after this long is stopped (its worker process is killed) and recorded as failed;
    with a timeout, cases always run in worker processes, even with jobs == 1.
    Returns one :class:`CaseResult` per case, in manifest order. KeyboardInterrupt propagates after
    summary.csv has been written.
    """
    out = Path(os.path.abspath(out))
    if case_timeout is not None and not case_timeout > 0:
        raise InputError(f"the case timeout must be a positive number of seconds, not {case_timeout}")
    if params is None:
        from .pipeline import Params
        params = Params()
    check_cases(cases, out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, CaseResult] = {}
    tracker = Tracker(len(cases), progress)
    with _Lock(out):
        _rmtree(out / STAGING)  # leftovers of a crashed run: never mistaken for outputs
        todo: list[Task] = []
        for c in cases:
            tracker.event(case=c.case_id, case_stage="hash")
            h, digests = case_hash(c, params)
            m = None if force else finished_marker(out / c.case_id, h)
            if m is not None:
                res = CaseResult(c.case_id, "skipped", success=m.get("success"), metric=m.get("metric"),
                                 seconds=m.get("seconds"), warnings=m.get("warnings", ""),
                                 out_dir=str(out / c.case_id))
                results[c.case_id] = res
                tracker.finished(res)
            else:
                todo.append(Task(c, out, params, h, digests, run_case))
        write_summary(out, cases, results)

        def record(res: CaseResult) -> None:
            results[res.case_id] = res
            write_summary(out, cases, results)
            tracker.finished(res)

        try:
            if todo:
                n_jobs, n_threads, plan_notes = plan_jobs(jobs, [t.case for t in todo], len(todo), threads)
                for n in plan_notes:
                    if note is not None:
                        note(n)
                for t in todo:
                    t.threads = n_threads
                if jobs <= 1 and case_timeout is None:
                    previous = set_threads(n_threads)
                    try:
                        for t in todo:
                            record(run_one(t, lambda kind, *p, _id=t.case.case_id:
                                           _on_worker_event(tracker, kind, _id, *p)))
                    finally:
                        if previous is not None:
                            set_threads(previous)
                else:
                    _run_pool(todo, out, n_jobs, n_threads, tracker, record, case_timeout)
        finally:
            write_summary(out, cases, results)
            _rmtree(out / STAGING)
    return [results.get(c.case_id) or CaseResult(c.case_id, "pending") for c in cases]


def _on_worker_event(tracker: Tracker, kind: str, cid: str, *payload) -> None:
    if kind == "start":
        tracker.event(case=cid, case_stage="start")
    elif kind == "stage":
        stage, done, total = payload
        tracker.event(case=cid, case_stage=stage, case_done=done, case_total=total)


def _kill_workers(ex) -> None:
    for proc in list(getattr(ex, "_processes", {}).values()):
        try:
            proc.terminate()
        except Exception:
            pass


def _run_pool(todo: list[Task], out: Path, jobs: int, threads: int, tracker: Tracker, record,
              case_timeout: Optional[float] = None) -> None:
    """Runs tasks in spawned worker processes; a dead worker fails only the cases it had started.

    With ``case_timeout``, a case running longer is stopped by killing the pool's workers: that case
    fails ("timed out"), the other cases running at that moment are put back in the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    stop = threading.Event()
    started: dict[str, float] = {}   # case id -> monotonic start time (from the workers' "start" events)

    def listen():
        import queue as _q
        while not stop.is_set():
            try:
                msg = queue.get(timeout=0.2)
            except _q.Empty:
                continue
            except (EOFError, OSError):
                break
            if msg and msg[0] == "start":
                started[msg[1]] = time.monotonic()
            _on_worker_event(tracker, *msg)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    pending = list(todo)
    # A dying worker breaks the whole pool, so every case running at that moment fails with it. Such
    # cases are retried once, each alone in a one-worker pool: only a case that kills its worker
    # again is recorded as failed.
    isolated: list[Task] = []
    retried: set[str] = set()
    try:
        while pending or isolated:
            if isolated:
                batch_tasks, n_workers = [isolated.pop(0)], 1
            else:
                batch_tasks, n_workers, pending = pending, jobs, []
            broken = []
            timed_out: set[str] = set()
            ex = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_worker_init,
                                        initargs=(threads, queue))
            try:
                for t in batch_tasks:
                    started.pop(t.case.case_id, None)   # a re-queued case's clock restarts with it
                futs = {ex.submit(_worker_task, t): t for t in batch_tasks}
                waiting = set(futs)
                while waiting:
                    done, waiting = cf.wait(waiting, timeout=None if case_timeout is None else 0.25,
                                            return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        t = futs[fut]
                        try:
                            res = fut.result()
                        except cf.process.BrokenProcessPool:
                            broken.append(t)
                            continue
                        except Exception as exc:  # e.g. an unpicklable result: still only this case fails
                            res = CaseResult(t.case.case_id, "failed",
                                             error=_one_line(f"internal error: {type(exc).__name__}: {exc}"))
                        record(res)
                    if case_timeout is not None and not timed_out:
                        now = time.monotonic()
                        late = {futs[f].case.case_id for f in waiting
                                if now - started.get(futs[f].case.case_id, now) > case_timeout}
                        if late:
                            timed_out |= late
                            _kill_workers(ex)   # the pool breaks: every unfinished future ends below
            except BaseException:
                # Ctrl-C (or another abort): stop the workers now rather than after their current
                # case; their staging folders are removed below and no marker was written.
                _kill_workers(ex)
                ex.shutdown(wait=True, cancel_futures=True)
                raise
            ex.shutdown(wait=True)
            not_started = []
            for t in broken:
                cid = t.case.case_id
                if timed_out:
                    _rmtree(out / STAGING / cid)
                    if cid in timed_out:
                        record(CaseResult(cid, "failed", error=f"timed out: still running after "
                                                               f"{case_timeout:g} s (--case-timeout)"))
                    else:
                        pending.append(t)   # stopped only because another case timed out
                    continue
                # Started (its staging folder exists) -> it was running when a worker died.
                if (out / STAGING / cid).exists():
                    _rmtree(out / STAGING / cid)
                    if cid in retried or n_workers == 1:
                        record(CaseResult(cid, "failed", error="the worker process running this case died "
                                                                 "(out of memory or a crash)"))
                    else:
                        retried.add(cid)
                        isolated.append(t)
                else:
                    not_started.append(t)
            if broken and len(not_started) == len(broken) == len(batch_tasks):
                # Nothing had started: the pool itself cannot start; do not loop forever.
                for t in not_started:
                    record(CaseResult(t.case.case_id, "failed", error="worker processes could not start"))
            else:
                pending.extend(not_started)
    finally:
        stop.set()
        listener.join(timeout=2)
        queue.close()


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    from .cli import add_pipeline_arguments

    parser.add_argument("input", help="manifest CSV (case_id,coronal,axial[,coronal_labels,axial_labels]) or a "
                                      "folder laid out as docs/BATCH.md describes")
    parser.add_argument("--out", "-o", required=True, help="output folder: OUT/<case id>/ and OUT/summary.csv")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="cases run in parallel processes (capped by CPU cores and memory; default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per case (default: CPU cores // jobs). Results are bit-identical "
                             "only for the same thread count")
    parser.add_argument("--force", action="store_true", help="re-run finished cases too")
    parser.add_argument("--case-timeout", type=float, default=None, metavar="SECONDS",
                        help="stop a case still running after this many seconds and record it as failed "
                             "(cases then run in worker processes, also with --jobs 1)")
    add_pipeline_arguments(parser)


def run_cli(args) -> int:
    from .cli import params_from_args

    if args.jobs < 1:
        raise ManifestError("--jobs must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ManifestError("--threads must be at least 1")
    cases = load_cases(args.input)
    params = params_from_args(args)
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    emit = {"json": json_events(), "bar": bar_events(), "none": None}[mode]
    try:
        results = run_batch(cases, args.out, params, jobs=args.jobs, progress=emit, force=args.force,
                            threads=args.threads, case_timeout=args.case_timeout,
                            note=lambda n: print(f"mmreg batch: note: {n}", file=sys.stderr))
    except KeyboardInterrupt:
        print(f"mmreg batch: interrupted; {Path(args.out) / SUMMARY} lists what finished. "
              f"Run the same command again to resume.", file=sys.stderr)
        return 130
    code, msg = summarize(results, Path(args.out))
    print(msg)
    for r in results:
        if r.status == "failed":
            print(f"mmreg batch: case {r.case_id} failed: {r.error}", file=sys.stderr)
    return code


def summarize(results: list[CaseResult], out: Path) -> tuple[int, str]:
    """(exit code, one-line summary): 0 when every case finished, 1 when any failed.

    A registration that ran but flagged itself unsuccessful counts as finished (success=False).
    """
    failed = [r for r in results if r.status == "failed"]
    pending = [r for r in results if r.status == "pending"]
    done = [r for r in results if r.status in ("done", "skipped")]
    flagged = [r for r in done if r.success is False]
    skipped = [r for r in results if r.status == "skipped"]
    msg = (f"{len(done)}/{len(results)} cases finished ({len(skipped)} already done earlier), "
           f"{len(failed)} failed, {len(flagged)} flagged unsuccessful -> {Path(out) / SUMMARY}")
    return (1 if failed or pending else 0), msg
