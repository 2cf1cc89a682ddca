"""Slice-axis interpolation, subset enumeration and pruning (paper Sec. 3.5.1-3.5.2)."""
from __future__ import annotations

import numpy as np
import pytest

from MultimodalRegistrationLib.errors import RegistrationError
from MultimodalRegistrationLib.registration.paper import (axis_correspondence, enumerate_subsets, interpolate_slice_axis,
                                                         plan_for)
from MultimodalRegistrationLib.volume import Volume, slice_axis
from MultimodalRegistrationLab import simulate


def _coronal(shape=(20, 30, 6), sp=(1.0, 1.0, 4.0)):
    A = simulate.stack_affine(np.array([1.0, 2.0, 3.0]), simulate.CORONAL_DIRS, sp, shape)
    return Volume(np.zeros(shape, np.float32), A)


def test_interpolation_keeps_world_positions_and_linear_ramps():
    v = _coronal()
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32) * 10.0, v.shape).copy()
    v = v.with_array(ramp)
    fine = interpolate_slice_axis(v, 0.5)
    assert slice_axis(v) == 2
    assert fine.shape == (20, 30, 41)                      # (6 - 1) * 4 / 0.5 + 1
    assert np.allclose(fine.spacing, [1, 1, 0.5])
    # first and last samples sit on the first and last original slice centres (same world points)
    assert np.allclose(fine.voxel_to_world([[0, 0, 0]]), v.voxel_to_world([[0, 0, 0]]))
    assert np.allclose(fine.voxel_to_world([[0, 0, 40]]), v.voxel_to_world([[0, 0, 5]]))
    # a ramp along the slice axis is reproduced exactly by linear interpolation
    assert np.allclose(fine.array[3, 4, :], np.arange(41) * 10.0 * 0.5 / 4.0, atol=1e-4)
    # the direction cosines do not change
    assert np.allclose(fine.direction, v.direction)


def test_axis_correspondence_coronal_to_axial():
    cor = _coronal()
    ax = Volume(np.zeros((10, 10, 5)), simulate.stack_affine(np.zeros(3), simulate.AXIAL_DIRS, (1, 1, 3), (10, 10, 5)))
    perm, signs = axis_correspondence(cor, ax)
    # axial i (R) <- coronal i (L, flipped); axial j (A) <- coronal k (A); axial k (S) <- coronal j (S)
    assert perm.tolist() == [0, 2, 1]
    assert signs.tolist() == [-1.0, 1.0, 1.0]


def test_enumeration_counts_and_pruning_like_the_paper():
    # a real-sized coronal stack: 500 rows of 0.4 mm along S, 25 axial slices of 4 mm
    plan = enumerate_subsets(n_rows=500, row_mm=0.4, slice_mm=4.0, n_slices=25)
    assert plan.skip == 10
    assert plan.n_enumerated == 500                       # "about 500 subsets", not disjoint
    kept = plan.kept_starts
    assert kept[0] == 0 and kept[-1] == 500 - 1 - 24 * 10
    assert 0.4 < plan.kept.mean() < 0.6                   # "about 50%" removed
    rows = plan.rows(kept[-1])
    assert len(rows) == 25 and rows[-1] == 499 and np.all(np.diff(rows) == 10)
    for s in plan.starts[~plan.kept]:
        assert plan.rows(s)[-1] > 499                     # every pruned subset runs past the stack


def test_no_subset_fits_raises():
    with pytest.raises(RegistrationError):
        enumerate_subsets(n_rows=50, row_mm=1.0, slice_mm=5.0, n_slices=20)


def test_plan_on_simulated_case_rows_one_axial_spacing_apart(fast_case):
    mov, fix = fast_case.coronal_t2, fast_case.axial_t2
    perm, _ = axis_correspondence(mov, fix)
    km = slice_axis(mov)
    fine = interpolate_slice_axis(mov, float(fix.spacing[int(np.flatnonzero(perm == km)[0])]))
    plan = plan_for(fine, fix)
    assert plan.row_axis == 1                             # coronal j points ~S
    assert plan.n_slices == fix.shape[2]
    assert plan.kept.any() and not plan.kept.all()
    # consecutive rows of a subset are one axial slice spacing apart along the axial slice normal,
    # up to the rounding of the skip to whole rows
    r = plan.rows(plan.kept_starts[0])
    p0 = fine.voxel_to_world([[0, r[0], 0]])[0]
    p1 = fine.voxel_to_world([[0, r[1], 0]])[0]
    step = float(np.dot(p1 - p0, fix.direction[:, 2]))
    assert abs(abs(step) - fix.spacing[2]) <= 0.5 * plan.row_mm + 0.1
