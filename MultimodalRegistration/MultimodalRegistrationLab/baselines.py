"""The elastix and ANTs rigid wrappers of the benchmarks, behind the product's
:class:`~MultimodalRegistrationLib.registration.RegistrationResult` (not shipped: ``itk-elastix`` and
``antspyx`` are imported lazily and are not dependencies of the product; ``pip install -e ".[baselines]"``).

Both toolkits work in LPS and return a fixed->moving point map; image geometry crosses with
:func:`MultimodalRegistrationLib.geometry.lps_geometry` and the result with
:func:`MultimodalRegistrationLib.geometry.from_itk_fixed_to_moving`, the core's one RAS/LPS bridge.
The pyramid schedules shrink in-plane only (:func:`~MultimodalRegistrationLib.registration.pyramid.inplane_factors`).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from MultimodalRegistrationLib import geometry
from MultimodalRegistrationLib.registration import RegistrationResult
from MultimodalRegistrationLib.registration.images import normalised
from MultimodalRegistrationLib.registration.pyramid import inplane_factors
from MultimodalRegistrationLib.volume import Volume


# ----------------------------------------------------------------------------- elastix

def _itk_image(vol: Volume):
    import itk

    arr = np.ascontiguousarray(np.asarray(vol.array, dtype=np.float32).transpose(2, 1, 0))
    img = itk.image_from_array(arr)
    origin, direction = geometry.lps_geometry(vol)
    img.SetSpacing([float(s) for s in vol.spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    return img


def register_elastix(moving: Volume, fixed: Volume, *, params: dict | None = None, seed: int = 0):
    """itk-elastix rigid (EulerTransform), AdvancedMattesMutualInformation, 3 resolutions with
    in-plane-only pyramids, starting from the headers."""
    import itk

    p = {"iterations": 250, "levels_mm": (4.0, 2.0, 1.0), "samples": 4096, "init": "header"}
    p.update(params or {})
    t0 = time.perf_counter()
    fimg = _itk_image(normalised(fixed))
    mimg = _itk_image(normalised(moving))
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
    fixed_schedule, moving_schedule = [], []
    for level_mm in p["levels_mm"]:
        fixed_schedule += [str(v) for v in inplane_factors(fixed, level_mm)]
        moving_schedule += [str(v) for v in inplane_factors(moving, level_mm)]
    pm["FixedImagePyramidSchedule"] = fixed_schedule
    pm["MovingImagePyramidSchedule"] = moving_schedule
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
    euler = sitk.Euler3DTransform()
    euler.SetCenter(ctr)
    euler.SetRotation(*par[:3])
    euler.SetTranslation(par[3:6])
    moving_to_fixed = geometry.from_itk_fixed_to_moving(geometry.sitk_transform_to_matrix(euler))
    return RegistrationResult(moving_to_fixed=moving_to_fixed, method="elastix", metric=float("nan"), success=True,
                              seconds=time.perf_counter() - t0, details={"params": par, "center": ctr})


# ----------------------------------------------------------------------------- ANTs

def _ants_image(vol: Volume):
    import ants

    origin, direction = geometry.lps_geometry(vol)
    arr = np.asarray(vol.array, dtype=np.float32)
    return ants.from_numpy(np.ascontiguousarray(arr), origin=[float(v) for v in origin],
                           spacing=[float(s) for s in vol.spacing], direction=direction)


def register_ants(moving: Volume, fixed: Volume, *, params: dict | None = None, seed: int = 0):
    """ANTsPy rigid registration, Mattes MI, starting from the headers (``initial_transform=
    "Identity"``; ANTs' own default would start from the centres of mass)."""
    import ants

    p = {"iterations": (200, 100, 50), "shrink": (4, 2, 1), "smoothing": (2, 1, 0), "init": "Identity"}
    p.update(params or {})
    t0 = time.perf_counter()
    fimg = _ants_image(normalised(fixed))
    mimg = _ants_image(normalised(moving))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = ants.registration(fimg, mimg, type_of_transform="Rigid", initial_transform=p["init"],
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
    linear = par[:9].reshape(3, 3)
    fixed_to_moving_lps = np.eye(4)
    fixed_to_moving_lps[:3, :3] = linear
    fixed_to_moving_lps[:3, 3] = par[9:12] + ctr - linear @ ctr
    moving_to_fixed = geometry.from_itk_fixed_to_moving(fixed_to_moving_lps)
    return RegistrationResult(moving_to_fixed=moving_to_fixed, method="ants", metric=float("nan"), success=True,
                              seconds=time.perf_counter() - t0, details={"params": par.tolist()})


BENCH_METHODS = {"elastix": register_elastix, "ants": register_ants}
