"""SimpleITK mutual information: ``--method mi`` and the MI polish.

* :func:`register_mi`: the paper's SimpleITK mutual-information baseline (Sec. 4.1): the coronal
  stack is first interpolated to isotropic voxels (BSpline or linear), then a rigid Euler3D
  registration with Mattes MI as in the SimpleITK notebooks' "Registration introduction" example
  (geometry-centred initialisation, gradient descent, 3-level pyramid).
* :func:`mi_polish`: the multimodal safety net of the search engine. When the NCC of ``search-ncc``
  stays low (an imperfect conversion), the pipeline refines the transform with Mattes mutual
  information between the **original** coronal ceT1 and the axial T2 (contrast-independent),
  starting from each candidate (the NCC result and the headers), and keeps the candidate with the
  best MI evaluated the same way for all. Its pyramid shrinks in-plane only (NOTES.md: shrinking the
  thick slice axis destroys it).

SimpleITK returns a fixed->moving point map in LPS; it is converted with
:func:`~..geometry.from_itk_fixed_to_moving` into our moving->fixed RAS contract. SimpleITK is
imported lazily (so is torch: nothing here needs it).
"""
from __future__ import annotations

import time

import numpy as np

from .. import geometry
from ..errors import InputError
from ..geometry import volume_to_sitk
from ..progress import report
from ..volume import Volume, slice_axis
from .images import normalised
from .params import MiParams
from .pyramid import shrink_inplane
from .result import RegistrationResult

#: A polished result counts as successful when its MI score (negative Mattes MI, 32 bins) is at or
#: below this. Measured on the sample case and a BraTS simulation: -0.86 / -0.67 at the true
#: transform, -0.57 / -0.63 at 2-3 mm off, -0.42 / -0.49 at 5 mm off (`mi_score`).
POLISH_SUCCESS_MI = -0.55
#: Share of the coronal voxels sampled (on a regular grid) for the MI metric.
POLISH_SAMPLING = 0.1
#: The axial stack is block-averaged in-plane to about this spacing (mm) before the polish; 0 = as is.
POLISH_AXIAL_MM = 1.0


def make_isotropic(img, iso_mm: float, interpolation: str = "bspline"):
    """Resamples a SimpleITK image to isotropic ``iso_mm`` voxels over the same extent."""
    import SimpleITK as sitk

    if interpolation not in ("bspline", "linear"):
        raise InputError("interpolation must be 'bspline' or 'linear'")
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    size = np.asarray(img.GetSize(), dtype=np.float64)
    new_size = [max(1, int(round(n * s / iso_mm))) for n, s in zip(size, spacing)]
    # keep the physical centre of the first voxel's block aligned: origin shifts by (iso - sp) / 2
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    origin = np.asarray(img.GetOrigin()) + direction @ ((iso_mm - spacing) / 2.0)
    interp = sitk.sitkBSpline if interpolation == "bspline" else sitk.sitkLinear
    return sitk.Resample(img, new_size, sitk.Transform(), interp, origin.tolist(), [iso_mm] * 3,
                         img.GetDirection(), 0.0, sitk.sitkFloat32)


def register_mi(moving: Volume, fixed: Volume, *, params: MiParams | None = None, progress=None,
                seed: int = 0) -> RegistrationResult:
    """The paper's SimpleITK MI baseline. ``moving`` is the coronal stack (ceT1 for the multimodal
    baseline), ``fixed`` the axial T2; ``params``: :class:`~.params.MiParams`."""
    import SimpleITK as sitk

    p = params or MiParams()
    if not p.threads:
        return _register_mi(moving, fixed, p, progress, seed)
    # One thread count for every filter of the run (resampling and smoothing included): a per-method
    # count on top of a different global default made the result depend on the thread split.
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(p.threads))
    try:
        return _register_mi(moving, fixed, p, progress, seed)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _register_mi(moving: Volume, fixed: Volume, p: MiParams, progress, seed: int) -> RegistrationResult:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    fimg = volume_to_sitk(normalised(fixed))
    mimg = volume_to_sitk(normalised(moving))
    ks = slice_axis(moving)
    iso = float(p.iso_mm or min(moving.spacing[a] for a in range(3) if a != ks))
    mimg = make_isotropic(mimg, iso, p.interpolation)
    if p.init == "geometry":
        init = sitk.CenteredTransformInitializer(fimg, mimg, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.GEOMETRY)
    else:                                   # "header"
        init = sitk.Euler3DTransform()
        init.SetCenter(fimg.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fimg.GetSize()]))
    method = sitk.ImageRegistrationMethod()
    if p.threads:
        method.SetNumberOfThreads(int(p.threads))
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(p.bins))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(float(p.sampling), seed=int(seed) + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(learningRate=float(p.learning_rate), numberOfIterations=int(p.iterations),
                                         convergenceMinimumValue=1e-6, convergenceWindowSize=10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrinkFactors=list(p.shrink))
    method.SetSmoothingSigmasPerLevel(smoothingSigmas=list(p.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(init, inPlace=False)
    n_total = int(p.iterations) * len(p.shrink)
    state = {"n": 0}

    def _on_iteration():
        state["n"] += 1
        if state["n"] % 10 == 0:
            report(progress, "register", min(state["n"], n_total), n_total)

    method.AddCommand(sitk.sitkIterationEvent, _on_iteration)
    try:
        tx = method.Execute(fimg, mimg)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        start = geometry.from_itk_fixed_to_moving(geometry.sitk_transform_to_matrix(init))
        return RegistrationResult(moving_to_fixed=start, method="mi", metric=float("nan"), success=False,
                                  seconds=time.perf_counter() - t0, details={"error": msg[:300]})
    report(progress, "register", n_total, n_total)
    moving_to_fixed = geometry.from_itk_fixed_to_moving(geometry.sitk_transform_to_matrix(tx))
    metric = float(method.GetMetricValue())
    return RegistrationResult(moving_to_fixed=moving_to_fixed, method="mi", metric=metric,
                              success=bool(np.isfinite(metric) and metric <= float(p.success_metric)),
                              seconds=time.perf_counter() - t0,
                              details={"iterations": int(method.GetOptimizerIteration()),
                                       "stop": method.GetOptimizerStopConditionDescription()[:300],
                                       "interpolation": p.interpolation, "iso_mm": iso, "init": p.init,
                                       "success_threshold_metric": float(p.success_metric)})


# ----------------------------------------------------------------------------- the MI polish

def _euler_from_matrix(fixed_to_moving_lps: np.ndarray, center):
    import SimpleITK as sitk

    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(c) for c in center])
    tx.SetMatrix(fixed_to_moving_lps[:3, :3].ravel().tolist(), 1e-4)
    c = np.asarray(center)
    rotation = fixed_to_moving_lps[:3, :3]
    tx.SetTranslation((fixed_to_moving_lps[:3, 3] - (c - rotation @ c)).tolist())
    return tx


def _polish_method(seed, shrink, smoothing, iterations):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(POLISH_SAMPLING, seed=int(seed) + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrinkFactors=shrink)
    method.SetSmoothingSigmasPerLevel(smoothingSigmas=smoothing)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _image_center(img):
    return img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()])


def mi_score(moving_cet1: Volume, fixed: Volume, moving_to_fixed: np.ndarray, seed: int = 0) -> float:
    """SimpleITK's negative Mattes MI (lower is better) of one transform, as :func:`mi_polish` scores it."""
    cimg = volume_to_sitk(normalised(moving_cet1))
    aimg = volume_to_sitk(normalised(fixed))
    evaluator = _polish_method(seed, [1], [0.5], 0)
    evaluator.SetInitialTransform(_euler_from_matrix(geometry.ras_to_lps(np.asarray(moving_to_fixed)),
                                                     _image_center(cimg)), inPlace=False)
    return float(evaluator.MetricEvaluate(cimg, aimg))


def mi_polish(moving_cet1: Volume, fixed: Volume, candidates: dict, seed: int = 0, iterations: int = 60) -> dict:
    """Refines each candidate moving->fixed transform by MI and returns the best.

    The coronal stack is the ITK *fixed* image here (its thin in-plane grid is sampled, its thick
    slice axis is never shrunk), the axial T2 the moving one. Returns ``{"moving_to_fixed", "metric",
    "start", "per_start", "seconds"}``; ``metric`` is SimpleITK's negative Mattes MI (lower is better).
    """
    t0 = time.perf_counter()
    cimg = volume_to_sitk(normalised(moving_cet1))
    if POLISH_AXIAL_MM > 0:
        fixed = shrink_inplane(fixed, POLISH_AXIAL_MM)
    aimg = volume_to_sitk(normalised(fixed))
    center = _image_center(cimg)
    per_start = {}
    best = None
    for name, candidate in candidates.items():
        # ITK maps points of its fixed image (the coronal) to its moving image (the axial):
        # that is our moving->fixed transform, conjugated into LPS.
        init = _euler_from_matrix(geometry.ras_to_lps(np.asarray(candidate, dtype=np.float64)), center)
        # No shrinking (SimpleITK would shrink the thick slice axis too); smoothing 2 mm then 0.5 mm.
        method = _polish_method(seed, [1, 1], [2.0, 0.5], iterations)
        method.SetInitialTransform(init, inPlace=False)
        try:
            tx = method.Execute(cimg, aimg)
            metric = float(method.GetMetricValue())
        except RuntimeError:
            continue
        polished = geometry.lps_to_ras(geometry.sitk_transform_to_matrix(tx))
        # Evaluate every result with one metric configuration so that starts are comparable.
        evaluator = _polish_method(seed, [1], [0.5], 0)
        evaluator.SetInitialTransform(_euler_from_matrix(geometry.ras_to_lps(polished), center), inPlace=False)
        try:
            score = float(evaluator.MetricEvaluate(cimg, aimg))
        except RuntimeError:
            continue
        per_start[name] = {"metric": score, "optimiser_metric": metric}
        if best is None or score < best[1]:
            best = (polished, score, name)
    if best is None:
        return {"moving_to_fixed": None, "metric": float("nan"), "start": None, "per_start": per_start,
                "seconds": time.perf_counter() - t0}
    return {"moving_to_fixed": best[0], "metric": best[1], "start": best[2], "per_start": per_start,
            "seconds": time.perf_counter() - t0}
