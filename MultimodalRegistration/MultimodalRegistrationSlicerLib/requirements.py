"""Python requirements of the core: read and checked here (Slicer-free); :mod:`.dependencies` installs
them inside Slicer (``slicer.packaging.pip_ensure`` on Slicer >= 5.12, else ``slicer.util.pip_install``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional


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


def torch_installed() -> bool:
    """Whether torch is installed, without importing it into Slicer's process."""
    import importlib.metadata
    try:
        importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
