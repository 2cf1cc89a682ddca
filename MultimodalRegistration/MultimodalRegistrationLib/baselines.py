"""Intensity-based baselines behind the same :class:`~.register.RegistrationResult`.

* :func:`register_mi` -- the paper's SimpleITK mutual-information baseline (Sec. 4.1): the coronal
  stack is first interpolated to isotropic voxels (BSpline or linear), then a rigid Euler3D
  registration with Mattes MI as in the SimpleITK notebooks' "Registration introduction" example
  (geometry-centred initialisation, gradient descent, 3-level pyramid). Part of the product
  (``--method mi``).
* :func:`register_elastix` / :func:`register_ants` -- used by the benchmark only; ``itk-elastix`` and
  ``antspyx`` are imported lazily and are not dependencies of the product.

All three toolkits return a fixed->moving point map in LPS; it is converted once, with
:func:`geometry.from_itk_fixed_to_moving`, into our moving->fixed RAS contract.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from . import geometry
from .errors import InputError
from .progress import report
from .volume import Volume, slice_axis

LPS = np.diag([-1.0, -1.0, 1.0])

MI_DEFAULTS = {
    "interpolation": "bspline",   # "bspline" | "linear": how the coronal stack is made isotropic
    "iso_mm": None,               # isotropic spacing (default: the coronal in-plane spacing)
    "init": "geometry",           # "geometry" (the notebook's centred initialiser) | "header"
    "bins": 50,
    "sampling": 0.01,
    "learning_rate": 1.0,
    "iterations": 100,
    "shrink": (4, 2, 1),
    "smoothing_mm": (2.0, 1.0, 0.0),
    "success_metric": -0.67,      # calibrated on the benchmark's calibration sources (docs/REGISTRATION.md)
    "threads": None,              # ITK threads for this registration (None: SimpleITK's global default);
                                  # the result depends on it: 1 makes it reproducible run to run
}


def volume_to_sitk(vol: Volume, dtype=np.float32):
    """A SimpleITK image with the volume's geometry (RAS affine -> LPS origin/direction)."""
    import SimpleITK as sitk

    arr = np.asarray(vol.array, dtype=dtype)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))   # (i,j,k) -> (z,y,x)
    img.SetSpacing([float(s) for s in vol.spacing])
    img.SetOrigin([float(v) for v in LPS @ vol.affine[:3, 3]])
    img.SetDirection([float(v) for v in (LPS @ vol.direction).ravel()])
    return img


def sitk_to_volume(img) -> Volume:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    D = LPS @ np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    A = np.eye(4)
    A[:3, :3] = D * np.asarray(img.GetSpacing(), dtype=np.float64)
    A[:3, 3] = LPS @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return Volume(arr, A)


def _normalised(vol: Volume) -> Volume:
    from .register import robust_scale
    a = np.asarray(vol.array, dtype=np.float32)
    return vol.with_array(a / robust_scale(a))


def make_isotropic(img, iso_mm: float, interpolation: str = "bspline"):
    """Resamples a SimpleITK image to isotropic ``iso_mm`` voxels over the same extent."""
    import SimpleITK as sitk

    sp = np.asarray(img.GetSpacing(), dtype=np.float64)
    size = np.asarray(img.GetSize(), dtype=np.float64)
    new_size = [max(1, int(round(n * s / iso_mm))) for n, s in zip(size, sp)]
    # keep the physical centre of the first voxel's block aligned: origin shifts by (iso - sp) / 2
    D = np.asarray(img.GetDirection()).reshape(3, 3)
    origin = np.asarray(img.GetOrigin()) + D @ ((iso_mm - sp) / 2.0)
    interp = sitk.sitkBSpline if interpolation == "bspline" else sitk.sitkLinear
    if interpolation not in ("bspline", "linear"):
        raise InputError("interpolation must be 'bspline' or 'linear'")
    return sitk.Resample(img, new_size, sitk.Transform(), interp, origin.tolist(), [iso_mm] * 3,
                         img.GetDirection(), 0.0, sitk.sitkFloat32)


def register_mi(moving: Volume, fixed: Volume, *, params: dict | None = None, progress=None,
                seed: int = 0):
    """The paper's SimpleITK MI baseline. ``moving`` is the coronal stack (ceT1 for the multimodal
    baseline), ``fixed`` the axial T2."""
    import SimpleITK as sitk
    from .register import RegistrationResult

    p = dict(MI_DEFAULTS)
    p.update(params or {})
    unknown = set(p) - set(MI_DEFAULTS)
    if unknown:
        raise InputError(f"unknown parameter(s) for method 'mi': {', '.join(sorted(unknown))}")
    if not p["threads"]:
        return _register_mi(moving, fixed, p, progress, seed)
    # One thread count for every filter of the run (resampling and smoothing included): a per-method
    # count on top of a different global default made the result depend on the thread split.
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(p["threads"]))
    try:
        return _register_mi(moving, fixed, p, progress, seed)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _register_mi(moving: Volume, fixed: Volume, p: dict, progress, seed: int):
    import SimpleITK as sitk
    from .register import RegistrationResult

    t0 = time.perf_counter()
    fimg = volume_to_sitk(_normalised(fixed))
    mimg = volume_to_sitk(_normalised(moving))
    ks = slice_axis(moving)
    iso = float(p["iso_mm"] or min(moving.spacing[a] for a in range(3) if a != ks))
    mimg = make_isotropic(mimg, iso, p["interpolation"])
    if p["init"] == "geometry":
        init = sitk.CenteredTransformInitializer(fimg, mimg, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.GEOMETRY)
    elif p["init"] == "header":
        init = sitk.Euler3DTransform()
        init.SetCenter(fimg.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fimg.GetSize()]))
    else:
        raise InputError("init must be 'geometry' or 'header'")
    R = sitk.ImageRegistrationMethod()
    if p["threads"]:
        R.SetNumberOfThreads(int(p["threads"]))
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(p["bins"]))
    R.SetMetricSamplingStrategy(R.RANDOM)
    R.SetMetricSamplingPercentage(float(p["sampling"]), seed=int(seed) + 1)
    R.SetInterpolator(sitk.sitkLinear)
    R.SetOptimizerAsGradientDescent(learningRate=float(p["learning_rate"]), numberOfIterations=int(p["iterations"]),
                                    convergenceMinimumValue=1e-6, convergenceWindowSize=10)
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetShrinkFactorsPerLevel(shrinkFactors=list(p["shrink"]))
    R.SetSmoothingSigmasPerLevel(smoothingSigmas=list(p["smoothing_mm"]))
    R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    R.SetInitialTransform(init, inPlace=False)
    n_total = int(p["iterations"]) * len(p["shrink"])
    state = {"n": 0}

    def _it():
        state["n"] += 1
        if state["n"] % 10 == 0:
            report(progress, "register", min(state["n"], n_total), n_total)

    R.AddCommand(sitk.sitkIterationEvent, _it)
    try:
        tx = R.Execute(fimg, mimg)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        M = geometry.from_itk_fixed_to_moving(geometry.sitk_transform_to_matrix(init))
        return RegistrationResult(moving_to_fixed=M, method="mi", metric=float("nan"), success=False,
                                  seconds=time.perf_counter() - t0, details={"error": msg[:300]})
    report(progress, "register", n_total, n_total)
    M = geometry.from_itk_fixed_to_moving(geometry.sitk_transform_to_matrix(tx))
    metric = float(R.GetMetricValue())
    return RegistrationResult(moving_to_fixed=M, method="mi", metric=metric,
                              success=bool(np.isfinite(metric) and metric <= float(p["success_metric"])),
                              seconds=time.perf_counter() - t0,
                              details={"iterations": int(R.GetOptimizerIteration()),
                                       "stop": R.GetOptimizerStopConditionDescription()[:300],
                                       "interpolation": p["interpolation"], "iso_mm": iso, "init": p["init"],
                                       "success_threshold_metric": float(p["success_metric"])})


# ----------------------------------------------------------------------------- elastix (benchmark only)

def _itk_image(vol: Volume):
    import itk

    arr = np.ascontiguousarray(np.asarray(vol.array, dtype=np.float32).transpose(2, 1, 0))
    img = itk.image_from_array(arr)
    img.SetSpacing([float(s) for s in vol.spacing])
    img.SetOrigin([float(v) for v in LPS @ vol.affine[:3, 3]])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(LPS @ vol.direction)))
    return img


def _inplane_shrink(vol: Volume, level_mm: float) -> list[int]:
    """Per-axis (x, y, z = i, j, k) shrink factors that bring the in-plane axes to ~level_mm and
    leave the slice axis alone (NOTES.md: do not shrink thick stacks through-plane)."""
    k = slice_axis(vol)
    return [1 if a == k else max(1, int(round(level_mm / vol.spacing[a]))) for a in range(3)]


def register_elastix(moving: Volume, fixed: Volume, *, params: dict | None = None, seed: int = 0):
    """itk-elastix rigid (EulerTransform), AdvancedMattesMutualInformation, 3 resolutions with
    in-plane-only pyramids, starting from the headers. Benchmark only."""
    import itk
    from .register import RegistrationResult

    p = {"iterations": 250, "levels_mm": (4.0, 2.0, 1.0), "samples": 4096, "init": "header"}
    p.update(params or {})
    t0 = time.perf_counter()
    fimg = _itk_image(_normalised(fixed))
    mimg = _itk_image(_normalised(moving))
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap("rigid", len(p["levels_mm"]))
    pm["Metric"] = ["AdvancedMattesMutualInformation"]
    pm["NumberOfHistogramBins"] = ["32"]
    pm["MaximumNumberOfIterations"] = [str(int(p["iterations"]))]
    pm["NumberOfSpatialSamples"] = [str(int(p["samples"]))]
    pm["RequiredRatioOfValidSamples"] = ["0.05"]
    pm["AutomaticTransformInitialization"] = ["false"] if p["init"] == "header" else ["true"]
    pm["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
    pm["AutomaticScalesEstimation"] = ["true"]
    pm["RandomSeed"] = [str(int(seed) + 1)]
    fs, ms = [], []
    for lm in p["levels_mm"]:
        fs += [str(v) for v in _inplane_shrink(fixed, lm)]
        ms += [str(v) for v in _inplane_shrink(moving, lm)]
    pm["FixedImagePyramidSchedule"] = fs
    pm["MovingImagePyramidSchedule"] = ms
    pm["FixedImagePyramid"] = ["FixedSmoothingImagePyramid"]
    pm["MovingImagePyramid"] = ["MovingSmoothingImagePyramid"]
    pm["WriteResultImage"] = ["false"]
    po.AddParameterMap(pm)
    try:
        _, rp = itk.elastix_registration_method(fimg, mimg, parameter_object=po, log_to_console=False,
                                                number_of_threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    except Exception as exc:   # elastix raises a generic RuntimeError/ITK exception
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return RegistrationResult(moving_to_fixed=np.eye(4), method="elastix", metric=float("nan"), success=False,
                                  seconds=time.perf_counter() - t0, details={"error": msg[:300]})
    tp = rp.GetParameterMap(0)
    par = [float(v) for v in tp["TransformParameters"]]
    ctr = [float(v) for v in tp["CenterOfRotationPoint"]]
    import SimpleITK as sitk
    e = sitk.Euler3DTransform()
    e.SetCenter(ctr)
    e.SetRotation(*par[:3])
    e.SetTranslation(par[3:6])
    M = geometry.from_itk_fixed_to_moving(geometry.sitk_transform_to_matrix(e))
    return RegistrationResult(moving_to_fixed=M, method="elastix", metric=float("nan"), success=True,
                              seconds=time.perf_counter() - t0, details={"params": par, "center": ctr})


# ----------------------------------------------------------------------------- ANTs (benchmark only)

def _ants_image(vol: Volume):
    import ants

    arr = np.asarray(vol.array, dtype=np.float32)
    return ants.from_numpy(np.ascontiguousarray(arr), origin=[float(v) for v in LPS @ vol.affine[:3, 3]],
                           spacing=[float(s) for s in vol.spacing], direction=LPS @ vol.direction)


def register_ants(moving: Volume, fixed: Volume, *, params: dict | None = None, seed: int = 0):
    """ANTsPy rigid registration, Mattes MI, starting from the headers (``initial_transform=
    "Identity"``; ANTs' own default would start from the centres of mass). Benchmark only."""
    import ants
    from .register import RegistrationResult

    p = {"iterations": (200, 100, 50), "shrink": (4, 2, 1), "smoothing": (2, 1, 0), "init": "Identity"}
    p.update(params or {})
    t0 = time.perf_counter()
    f = _ants_image(_normalised(fixed))
    m = _ants_image(_normalised(moving))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = ants.registration(f, m, type_of_transform="Rigid", initial_transform=p["init"],
                                    aff_metric="mattes", aff_sampling=32, aff_random_sampling_rate=0.2,
                                    aff_iterations=tuple(p["iterations"]), aff_shrink_factors=tuple(p["shrink"]),
                                    aff_smoothing_sigmas=tuple(p["smoothing"]), random_seed=int(seed) + 1,
                                    outprefix=os.path.join(tmp, "ants_"), verbose=False)
            tx = ants.read_transform(out["fwdtransforms"][0])
        except Exception as exc:
            return RegistrationResult(moving_to_fixed=np.eye(4), method="ants", metric=float("nan"), success=False,
                                      seconds=time.perf_counter() - t0, details={"error": str(exc)[:300]})
    par = np.asarray(tx.parameters, dtype=np.float64)
    ctr = np.asarray(tx.fixed_parameters, dtype=np.float64)
    A = par[:9].reshape(3, 3)
    t = par[9:12]
    T = np.eye(4)
    T[:3, :3] = A
    T[:3, 3] = t + ctr - A @ ctr
    M = geometry.from_itk_fixed_to_moving(T)
    return RegistrationResult(moving_to_fixed=M, method="ants", metric=float("nan"), success=True,
                              seconds=time.perf_counter() - t0, details={"params": par.tolist()})


BENCH_METHODS = {"elastix": register_elastix, "ants": register_ants}
