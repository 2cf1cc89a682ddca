"""Input hashing and the per-case completion marker."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

from .. import __version__
from .layout import MARKER
from .manifest import Case


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


def remove_tree(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)

