"""Rigid registration of a coronal stack (moving) to an axial stack (fixed): one entry point,
:func:`register`, one module per method, all returning a :class:`RegistrationResult` whose
``moving_to_fixed`` maps a point of the coronal RAS world to the axial RAS world.

* ``search-cr`` (default, :mod:`.search_cr`): global FFT search on gradient magnitudes, then
  Levenberg-Marquardt on the correlation ratio, on the original ceT1 against the T2, run forward and
  backward; success = the two directions agree.
* ``search-ncc`` (:mod:`.search_ncc`; its old name ``ours`` is still accepted): the same engine with
  NCC on the translator's synthetic T2.
* ``paper`` (:mod:`.paper`): the paper's subset search (Sec. 3.5), faithfully.
* ``mi`` (:mod:`.mi`): the paper's SimpleITK mutual-information baseline (also home of the MI polish).

Shared pieces: :mod:`.params` (typed parameters, thresholds), :mod:`.result`, :mod:`.pyramid`
(in-plane shrinking, smoothing), :mod:`.images` (intensity helpers), :mod:`.search` (the FFT rotation
lattice search), :mod:`.refine` (pyramid levels, the NCC and correlation-ratio models, the one LM loop),
:mod:`.sampling` (torch trilinear sampling). The method modules are imported only when their method
runs, or by :func:`preload`: ``mi`` and ``import MultimodalRegistrationLib.registration`` never import
torch.

Details and every interpretation of the paper: docs/REGISTRATION.md.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .params import (MI_SUCCESS_METRIC, PAPER_SUCCESS_MSE, PARAMS, SEARCH_CR_CONSISTENCY_MM, SEARCH_NCC_SUCCESS_NCC,
                     MethodParams, MiParams, PaperParams, SearchCrParams, SearchNccParams, params_for)
from .result import RegistrationResult

METHODS = ("search-cr", "search-ncc", "paper", "mi")
#: Old names still accepted: "ours" was the NCC engine (now "search-ncc"), unchanged.
METHOD_ALIASES = {"ours": "search-ncc"}
DEFAULT_METHOD = "search-cr"

__all__ = ["METHODS", "METHOD_ALIASES", "DEFAULT_METHOD", "canonical_method", "register", "preload",
           "RegistrationResult",
           "MethodParams", "SearchCrParams", "SearchNccParams", "PaperParams", "MiParams", "PARAMS", "params_for",
           "SEARCH_CR_CONSISTENCY_MM", "SEARCH_NCC_SUCCESS_NCC", "PAPER_SUCCESS_MSE", "MI_SUCCESS_METRIC"]


def canonical_method(method: str) -> str:
    """The method's current name ("ours" -> "search-ncc"); raises InputError for an unknown one."""
    name = METHOD_ALIASES.get(method, method)
    if name not in METHODS:
        raise InputError(f"unknown registration method {method!r}; choose from {', '.join(METHODS)}")
    return name


def register(moving: Volume, fixed: Volume, method: str = DEFAULT_METHOD, *, params=None,
             progress=None, device: str = "cpu", seed: int = 0) -> RegistrationResult:
    """Registers ``moving`` (coronal stack, its header world) to ``fixed`` (axial stack).

    ``params``: None, a dict of the method's parameters (``--param KEY=VALUE``; unknown keys and bad
    values raise InputError) or the method's parameter dataclass. ``device``: see :mod:`..device`."""
    method = canonical_method(method)
    _check_inputs(moving, fixed)
    typed = params_for(method, params)
    t0 = time.perf_counter()
    if method == "search-cr":
        from .search_cr import register_search_cr
        res = register_search_cr(moving, fixed, params=typed, progress=progress, device=device, seed=seed)
    elif method == "search-ncc":
        from .search_ncc import register_search_ncc
        res = register_search_ncc(moving, fixed, params=typed, progress=progress, device=device, seed=seed)
    elif method == "paper":
        from .paper import register_paper
        res = register_paper(moving, fixed, params=typed, progress=progress, device=device)
    else:
        from .mi import register_mi
        res = register_mi(moving, fixed, params=typed, progress=progress, seed=seed)
    res.seconds = time.perf_counter() - t0
    return res


def preload(method: str) -> None:
    """Imports what ``method`` would import while it first runs (search-cr: its modules and the polish's
    optimiser; search-ncc: its modules), so that a caller can pay those imports ahead of time, e.g. on a
    thread while it reads its inputs (``pipeline.run_case``)."""
    method = canonical_method(method)
    if method == "search-cr":
        from .search_cr import preload as lazy_imports
        lazy_imports()
    elif method == "search-ncc":
        from . import search_ncc  # noqa: F401


def _check_inputs(moving: Volume, fixed: Volume) -> None:
    for vol, name in ((moving, "moving (coronal) volume"), (fixed, "fixed (axial) volume")):
        if not isinstance(vol, Volume):
            raise InputError(f"{name} must be a Volume")
        arr = np.asarray(vol.array)
        if arr.ndim != 3 or min(arr.shape) < 2:
            raise InputError(f"{name} must be a 3D stack with at least 2 voxels per axis, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise InputError(f"{name} has NaN/Inf voxels")
        if float(arr.max()) == float(arr.min()):
            raise InputError(f"{name} is constant; nothing to register")
