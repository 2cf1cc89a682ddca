"""Typed parameters of every registration method, and the success thresholds they default to.

Each method has one frozen dataclass; :meth:`MethodParams.from_dict` builds it from a plain dict (the
``--param KEY=VALUE`` pairs of the CLI, already JSON-decoded there, or a caller's dict): an unknown key
raises :class:`~..errors.InputError` naming it and the valid ones, and a value is coerced to the field's
type (``"4"`` -> 4.0 for a float, ``"true"`` -> True, ``"4,2"`` or ``[4, 2]`` -> (4.0, 2.0) for a
per-level tuple) or rejected with the field's name. Choices and cross-field rules are checked on
construction (``__post_init__``), so every instance is valid.

Standard library and numpy only: importing this does not import torch or SimpleITK.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError

#: Success thresholds (documented and calibrated in docs/REGISTRATION.md).
#: search-ncc: final NCC over the overlap at the finest level; paper: mean MSE of the best subset after
#: the fixed image is scaled so that its 99th percentile is 1000 (the paper's 6e5 was on raw scanner
#: intensities and does not transfer); mi: final Mattes MI (negative, lower is better).
SEARCH_NCC_SUCCESS_NCC = 0.80
PAPER_SUCCESS_MSE = 5.3e4
MI_SUCCESS_METRIC = -0.67
#: search-cr's success rule: the forward (coronal -> axial) and backward (axial -> coronal) registrations,
#: each with its own global search and its own direction of the correlation ratio, must agree to within
#: this mean distance (mm) over the overlap. Chosen on 24 simulated cases of the 4 tuning patients
#: (best flag agreement, 92%; ties to the smaller value), checked on 6 cases of the held-out patient
#: (83%): benchmarks/results/real_calibration/ and benchmarks/calibrate_consistency.py.
SEARCH_CR_CONSISTENCY_MM = 2.0

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _number(name: str, value, kind):
    """``value`` as ``kind`` (int or float); strings are parsed; bools are rejected."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise InputError(f"parameter {name!r} must be {'an integer' if kind is int else 'a number'}, "
                             f"got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"parameter {name!r} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise InputError(f"parameter {name!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _coerce(name: str, value, kind: str):
    """One value to the field's declared type (``kind`` is the annotation's text)."""
    if kind.startswith("Optional["):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        kind = kind[len("Optional["):-1]
    if kind == "float":
        return _number(name, value, float)
    if kind == "int":
        return _number(name, value, int)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise InputError(f"parameter {name!r} must be true or false, got {value!r}")
    if kind == "str":
        if not isinstance(value, str):
            raise InputError(f"parameter {name!r} must be a string, got {value!r}")
        return value
    if kind in ("Tuple[float, ...]", "Tuple[int, ...]"):
        item = float if "float" in kind else int
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").replace("[", "").replace("]", "")
                     .split(",") if v.strip()]
        elif not isinstance(value, (list, tuple, np.ndarray)):
            value = [value]                      # a single level
        return tuple(_number(name, v, item) for v in value)
    if kind == "np.ndarray":                     # a 4x4 matrix
        try:
            matrix = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"parameter {name!r} must be a 4x4 matrix") from None
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise InputError(f"parameter {name!r} must be a finite 4x4 matrix, got shape {matrix.shape}")
        return matrix
    raise TypeError(f"no coercion for {kind!r}")   # a field declared with an unsupported annotation


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise InputError(f"{name} must be {' or '.join(repr(c) for c in choices)}, got {value!r}")


class MethodParams:
    """Mixin of the parameter dataclasses: construction from a dict, and back."""

    METHOD = ""

    @classmethod
    def valid_keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict | None = None, **overrides):
        """The method's parameters from ``values`` (unknown keys: InputError), defaults elsewhere."""
        given = dict(values or {}, **overrides)
        kinds = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(given) - set(kinds))
        if unknown:
            raise InputError(f"unknown parameter(s) for method {cls.METHOD!r}: {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(kinds))}")
        return cls(**{k: _coerce(k, v, kinds[k]) for k, v in given.items()})

    def replace(self, **changes):
        """A copy with ``changes`` (coerced and checked like :meth:`from_dict`)."""
        kinds = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(kinds))
        if unknown:
            raise InputError(f"unknown parameter(s) for method {self.METHOD!r}: {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: _coerce(k, v, kinds[k]) for k, v in changes.items()})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SearchNccParams(MethodParams):
    """The search engine (global FFT search + Levenberg-Marquardt refinement); as ``search-ncc`` it
    compares the translator's synthetic T2 with the T2 by NCC."""

    METHOD = "search-ncc"

    init: str = "search"                 # "search" (header start + global search) | "header" (trust headers) | "center"
    search_rot_deg: float = 15.0         # rotation lattice radius around the start
    search_rot_step_deg: float = 7.5
    search_lattice: str = "cubic"        # rotation lattice: "cubic" or "bcc" (body-centred; search.rotation_lattice)
    search_shift_mm: float = 50.0        # translation range of the FFT search around the start
    search_grid_mm: float = 8.0
    search_coarse_grid_mm: float = 12.0  # every rotation is scored on this grid first ...
    search_keep: int = 3                 # ... and this many of the best again on search_grid_mm
    top_k: int = 2                       # search candidates refined at the coarsest level ...
    screen_iterations: int = 3           # ... each for this many iterations; the best one finishes the level
    levels_mm: Tuple[float, ...] = (4.0, 2.0)   # axial in-plane resolution of the refinement levels
    iterations: Tuple[int, ...] = (20, 15)
    max_points: Tuple[int, ...] = (8000, 16000)
    profile_samples: int = 3
    optimizer: str = "lm"                # "lm" (Levenberg-Marquardt, analytic Jacobian) | "lbfgs" (L-BFGS, autograd; ncc only)
    lm_min_gain: float = 1e-6            # lm: stop once an accepted step raises the metric by less than this
    lm_tries: int = 5                    # lm: damped tries of a step (tenfold damping each) before it stops
    similarity: str = "ncc"              # "ncc" (monomodal: synthetic T2 vs T2) | "cr" (correlation ratio: any contrast)
    search_feature: str = "intensity"    # FFT search on "intensity" or "gradmag" (gradient magnitude, any contrast)
    fixed_mask_frac: float = 0.08        # fixed voxels above this share of its robust max are compared (0 = all)
    cr_bins: int = 10                    # cr: intensity bins (search) / knots of the piecewise-linear map (refinement)
    success_ncc: float = SEARCH_NCC_SUCCESS_NCC
    also_search_from_center: bool = False  # init "search": also search around the signal centroids (pooled)
    torch_threads: Optional[int] = 1     # the problem is small: more intra-op threads only add overhead (and
                                         # stall badly on a busy machine: 59 s instead of 7 s with 2 threads);
                                         # None or 0: leave torch's setting alone
    initial_transform: Optional[np.ndarray] = field(default=None, compare=False)   # a user start (4x4, RAS)

    def __post_init__(self):
        _choice("init", self.init, ("search", "header", "center"))
        _choice("optimizer", self.optimizer, ("lm", "lbfgs"))
        _choice("similarity", self.similarity, ("ncc", "cr"))
        _choice("search_feature", self.search_feature, ("intensity", "gradmag"))
        _choice("search_lattice", self.search_lattice, ("cubic", "bcc"))
        if self.similarity == "cr":
            if self.optimizer != "lm":
                raise InputError("similarity 'cr' needs optimizer 'lm'")
            if self.cr_bins < 3:
                raise InputError(f"cr_bins must be at least 3, got {self.cr_bins}")
        if self.lm_tries < 1:
            raise InputError(f"lm_tries must be at least 1, got {self.lm_tries}")
        if not self.lm_min_gain >= 0.0:
            raise InputError(f"lm_min_gain must be 0 or more, got {self.lm_min_gain}")
        n = len(self.levels_mm)
        if not n or len(self.iterations) != n or len(self.max_points) != n:
            raise InputError(f"levels_mm, iterations and max_points need one entry per level; got "
                             f"{n}, {len(self.iterations)} and {len(self.max_points)}")


@dataclass(frozen=True)
class SearchCrParams(SearchNccParams):
    """The default: the search engine on the correlation ratio, run forward and backward."""

    METHOD = "search-cr"

    similarity: str = "cr"
    search_feature: str = "gradmag"      # the FFT search compares gradient magnitudes (contrast-independent edges)
    fixed_mask_frac: float = 0.0         # every fixed voxel counts (the head outline against the background)
    cr_bins: int = 16
    also_search_from_center: bool = True
    # headers off by up to 30 deg (issue 11): the rotation lattice reaches 30 deg (in 10 deg steps, 123
    # rotations, until the body-centred lattice below) on a coarse grid, the best of them again on the 8 mm
    # grid; at 15 deg / 7.5 deg on a 12 mm grid a
    # 24 deg offset was found by neither direction, and the rescue made them agree on a 35 mm error.
    # 22-71% more CPU on three dev cases (benchmarks/results/search_cr_lattice_dev/README.md). The coarse
    # grid is 12 mm, not 16: a 16 mm grid samples a thin coronal slab (12 slices of 2.2 mm) with two
    # points, and on 78 tuning-patient dev cases (72 with exact truth; 30 of them 24-30 mm slabs) 12 mm
    # gave 71/72 under 2 mm against 67/72, none confidently wrong either way, at the same median time
    # (benchmarks/results/search_cr_thin_dev/README.md). The 16 best rotations of the coarse grid (not 4)
    # are scored again on the fine grid: on thin slabs the coarse ranking misses the true rotation, and both
    # directions then agreed on a wrong one (a tuning-patient case 11.5 mm off, flagged successful); on 147
    # tuning-patient dev cases 144 under 2 mm against 142, flag agreement 145 against 142, none
    # confidently wrong against one (same README); it costs about 15% more registration time
    # (benchmarks/results/e2e_v6/README.md)
    # The lattice is body-centred cubic with a 15 deg side (65 rotations), not cubic with 10 deg (123): every
    # rotation of the ball lies as close to a lattice rotation (8.4 against 8.7 deg) with 47% fewer
    # rotations to score. On 128 tuning-patient dev cases (96 with exact truth; two seed sets): success
    # 95/96 both, flag agreement 96/96 against 95/96 (the cubic lattice left one case 13.5 mm off flagged
    # successful), median TRE change 0.000 mm, 0.84-0.85x the CPU time
    # (benchmarks/results/search_cr_bcc_dev/README.md)
    search_rot_deg: float = 30.0
    search_rot_step_deg: float = 15.0
    search_lattice: str = "bcc"
    search_coarse_grid_mm: float = 12.0
    search_keep: int = 16
    iterations: Tuple[int, ...] = (40, 30)   # LM on the ratio converges more slowly than on NCC (it stops once converged)
    success_ncc: float = 0.0             # not used: success comes from the consistency check
    consistency: bool = True             # run the backward registration as well
    consistency_mm: float = SEARCH_CR_CONSISTENCY_MM
    symmetric: bool = True               # consistent results: the rigid mean of both estimates
    rescue: bool = True                  # inconsistent: refine each direction from the other's result
    passes: int = 2                      # still inconsistent: search again around the forward result
    vote: bool = True                    # a second metric (NMI) must not prefer an estimate the result is not
    concurrent: bool = True              # run the two directions at once on two threads when this process may
                                         # use two cores (threads.cpu_share()); same results, about half the time
    # the last step (registration/nmi_polish.py): L-BFGS on NMI from the result, the axial stack at 1 mm
    # in-plane; each direction's correlation ratio is biased by ~0.5-1 mm where the ceT1/T2 relation is
    # not a function. Chosen on 18 tuning-patient dev cases (benchmarks/results/search_cr_polish_dev/):
    # median TRE 0.66 -> 0.40 mm; the slice profile (3 samples) gave 0.38 mm at 1.7x the time; 30000
    # points 0.50 mm; 8 iterations as good as 12 at 0.7x the time (12 cases)
    nmi_polish: bool = True
    polish_level_mm: float = 1.0
    polish_points: int = 60000
    polish_profile_samples: int = 1
    polish_bins: int = 32
    polish_iterations: int = 8
    # the polish stops after 12 NMI evaluations (L-BFGS's line searches overran its own 16-evaluation limit,
    # up to 41 evaluations on a dev case), and samples its points in the moving volume's memory order from its start
    # (refine.Level.in_memory_order: half the sampling time; sums change only by rounding). On 128
    # tuning-patient dev cases (96 with exact truth, two seed sets): success 95/96 and flag agreement 96/96
    # as before, median TRE 0.379 -> 0.379 and 0.432 -> 0.434 mm, 0.89-0.90x the CPU time
    # (benchmarks/results/search_cr_polish_speed_dev/README.md); 6 iterations instead: +0.008 mm, not adopted
    polish_max_evaluations: int = 12     # 0: L-BFGS's own limits only
    polish_memory_order: bool = True
    polish_agreement: bool = True        # directions disagree: polish each; both reaching one pose is the check
    # the LM refinement stops once a step gains less than 3e-5 or after 2 damped tries (search-ncc: 1e-6, 5):
    # 0.85x and 0.91x the CPU time on two sets of 32 tuning-patient dev cases, median TRE change 0.000 mm, no
    # flag or success lost (benchmarks/results/search_cr_lm_stop_dev/README.md)
    lm_min_gain: float = 3e-5
    lm_tries: int = 2

    def engine(self, **changes) -> SearchNccParams:
        """The search engine's share of these parameters (with ``changes``), for one direction."""
        own = {f.name for f in fields(SearchNccParams)}
        values = {k: v for k, v in self.to_dict().items() if k in own}
        values.update(changes)
        return SearchNccParams(**values)


@dataclass(frozen=True)
class PaperParams(MethodParams):
    """The paper's subset search (Sec. 3.5)."""

    METHOD = "paper"

    lr0: float = 2.0                     # initial step in working pixels
    n_iter: int = 12                     # iterations of the greedy search per subset (n of Eq. 1)
    rot_step_deg: float = 1.0
    pixel_mm: float = 2.0                # in-plane working pixel for the MSE (speed; the paper used the native grid)
    normalisation: str = "simple"        # "simple" | "histogram"
    rotations: str = "inplane"           # "inplane" (about the axial slice normal) | "all" (also about R and A)
    subset_stride: int = 1               # evaluate every n-th kept subset (1 = all, as the paper)
    success_mse: float = PAPER_SUCCESS_MSE

    def __post_init__(self):
        _choice("normalisation", self.normalisation, ("simple", "histogram"))
        _choice("rotations", self.rotations, ("inplane", "all"))


@dataclass(frozen=True)
class MiParams(MethodParams):
    """The paper's SimpleITK mutual-information baseline (Sec. 4.1)."""

    METHOD = "mi"

    interpolation: str = "bspline"       # "bspline" | "linear": how the coronal stack is made isotropic
    iso_mm: Optional[float] = None       # isotropic spacing (default: the coronal in-plane spacing)
    init: str = "geometry"               # "geometry" (the notebook's centred initialiser) | "header"
    bins: int = 50
    sampling: float = 0.01
    learning_rate: float = 1.0
    iterations: int = 100
    shrink: Tuple[int, ...] = (4, 2, 1)
    smoothing_mm: Tuple[float, ...] = (2.0, 1.0, 0.0)
    success_metric: float = MI_SUCCESS_METRIC   # calibrated on the benchmark's calibration sources (docs/REGISTRATION.md)
    threads: Optional[int] = None        # ITK threads for this registration (None: SimpleITK's global default);
                                         # the result depends on it: 1 makes it reproducible run to run

    def __post_init__(self):
        _choice("interpolation", self.interpolation, ("bspline", "linear"))
        _choice("init", self.init, ("geometry", "header"))


#: method name -> its parameter class
PARAMS = {"search-cr": SearchCrParams, "search-ncc": SearchNccParams, "paper": PaperParams, "mi": MiParams}


def params_for(method: str, params=None):
    """``params`` (None, a dict, or the method's own dataclass) as the method's dataclass."""
    cls = PARAMS[method]
    if params is None or isinstance(params, dict):
        return cls.from_dict(params)
    if type(params) is not cls:
        raise InputError(f"method {method!r} takes {cls.__name__} (or a dict), got {type(params).__name__}")
    return params
