"""Baselines: ITK geometry conversion, the paper's SimpleITK MI baseline, elastix/ANTs wrappers
(the last two are opt-in, marker `baseline`: MMREG_SLOW_BASELINES=1 python3 -m pytest -q -m baseline,
with itk-elastix and antspyx installed: pip install -e ".[baselines]")."""
from __future__ import annotations


import numpy as np
import pytest

from MultimodalRegistrationLib import metrics
from MultimodalRegistrationLib.geometry import sitk_to_volume, volume_to_sitk
from MultimodalRegistrationLib.registration.mi import make_isotropic
from MultimodalRegistrationLab import simulate
from MultimodalRegistrationLib.volume import Volume


def _oblique_volume():
    R = simulate._rand_rotation(np.random.default_rng(4), 10.0) @ simulate.CORONAL_DIRS
    A = simulate.stack_affine(np.array([10.0, -20.0, 5.0]), R, (0.9, 0.9, 4.0), (12, 14, 5))
    return Volume(np.random.default_rng(0).random((12, 14, 5)).astype(np.float32), A)


def test_sitk_round_trip_and_physical_points_are_lps():
    v = _oblique_volume()
    img = volume_to_sitk(v)
    back = sitk_to_volume(img)
    assert np.allclose(back.affine, v.affine, atol=1e-6)
    assert np.array_equal(back.array, v.array)
    ijk = (3, 7, 2)
    ras = v.voxel_to_world(np.array([ijk], float))[0]
    lps = np.asarray(img.TransformIndexToPhysicalPoint(ijk))
    assert np.allclose(lps, ras * [-1, -1, 1], atol=1e-6)
    assert img.GetPixel(ijk) == pytest.approx(float(v.array[ijk]))


@pytest.mark.parametrize("interp", ["linear", "bspline"])
def test_isotropic_resampling_keeps_the_extent(interp):
    v = _oblique_volume()
    img = make_isotropic(volume_to_sitk(v), 0.9, interp)
    iso = sitk_to_volume(img)
    assert np.allclose(iso.spacing, 0.9)
    assert iso.shape[2] == round(5 * 4.0 / 0.9)
    # the block covered by the stack is the same: its centre does not move
    c0 = v.voxel_to_world(np.array([[-0.5, -0.5, -0.5]]))[0] + v.voxel_to_world(np.array([[11.5, 13.5, 4.5]]))[0]
    c1 = iso.voxel_to_world(np.array([[-0.5, -0.5, -0.5]]))[0] + iso.voxel_to_world(
        np.array(iso.shape, float)[None] - 0.5)[0]
    assert np.allclose(c0 / 2, c1 / 2, atol=0.5)


# elastix/ANTs are benchmark-only and slow to import and run: marked `baseline`, opt-in (Testing/conftest.py):
#   MMREG_SLOW_BASELINES=1 python3 -m pytest -q -m baseline
slow = pytest.mark.baseline


def _tre(case, M):
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    return metrics.tre(M, case.moving_to_fixed, pts)


@slow
def test_elastix_wrapper_recovers_small_offset(fast_case):
    from MultimodalRegistrationLab.baselines import register_elastix
    r = register_elastix(fast_case.coronal_t2, fast_case.axial_t2, params={"iterations": 60, "levels_mm": (4.0, 2.0)})
    assert not r.details.get("error"), r.details
    assert _tre(fast_case, r.moving_to_fixed)["median"] < 1.0


@slow
def test_ants_wrapper_recovers_small_offset(fast_case):
    from MultimodalRegistrationLab.baselines import register_ants
    r = register_ants(fast_case.coronal_t2, fast_case.axial_t2, params={"iterations": (40, 20), "shrink": (4, 2), "smoothing": (2, 1)})
    assert not r.details.get("error"), r.details
    assert _tre(fast_case, r.moving_to_fixed)["median"] < 1.0
