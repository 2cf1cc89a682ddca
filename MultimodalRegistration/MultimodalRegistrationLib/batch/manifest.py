"""Cases: the manifest CSV, the folder naming scheme, safe case ids, batch-level checks, shards."""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .layout import SUMMARY

ROLES = ("coronal", "axial", "coronal_labels", "axial_labels")
REQUIRED_ROLES = ("coronal", "axial")

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


def _resolve_input(value: str, base: Path) -> Path:
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
            kw[role] = _resolve_input(v, base)
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



def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text or ""))
    if not m:
        raise ManifestError(f"--shard expects K/N (e.g. 3/8), got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if not (n >= 1 and 1 <= k <= n):
        raise ManifestError(f"--shard {text}: need 1 <= K <= N")
    return k, n


def shard_cases(cases: list[Case], k: int, n: int) -> list[Case]:
    """Shard K of N: the cases at manifest positions K-1, K-1+N, K-1+2N, ... (deterministic, balanced).

    Every shard must be given the same manifest (the same cases in the same order).
    """
    return [c for i, c in enumerate(cases) if i % n == k - 1]
