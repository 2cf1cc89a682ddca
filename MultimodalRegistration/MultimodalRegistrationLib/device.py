"""The one device resolver of the core (the translator and the registration methods use it).

* ``"auto"`` (or None / ""): CUDA when torch sees a CUDA device, else the CPU;
* ``"cpu"``;
* ``"cuda"`` or ``"cuda:N"``: CUDA, and a clear :class:`~.errors.InputError` when no CUDA device is
  available: a device the user asked for by name is never silently replaced by another;
* anything else: InputError.
"""
from __future__ import annotations

from .errors import InputError


def resolve_device(device: str | None) -> str:
    """The torch device name for ``device`` (see the module docstring); raises InputError."""
    import torch

    name = str(device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but no CUDA device is available (use --device cpu)")
        return name
    raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")
