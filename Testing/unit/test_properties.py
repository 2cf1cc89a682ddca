"""Property-based tests (hypothesis) for the geometry core: transforms and their inverses, the RAS/LPS
edge, resampling round trips and orientation detection under random rotations."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from MultimodalRegistrationLib import geometry
from MultimodalRegistrationLib.volume import Volume, obliquity_deg, plane, slice_axis

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

angle = st.floats(-np.pi, np.pi, allow_nan=False)
half_angle = st.floats(-1.45, 1.45, allow_nan=False)  # |ry| < pi/2: Euler angles are unique
mm = st.floats(-200, 200, allow_nan=False)
point = st.tuples(mm, mm, mm)
rigid = st.tuples(angle, half_angle, angle, mm, mm, mm)
spacing = st.floats(0.25, 6.0, allow_nan=False)


def _random_rotation(axis, deg):
    axis = np.asarray(axis, dtype=np.float64)
    n = np.linalg.norm(axis)
    if n < 1e-6:
        return np.eye(3)
    axis = axis / n
    ang = np.radians(deg)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * K + (1 - np.cos(ang)) * K @ K


unit_axis = st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1)).filter(
    lambda v: np.linalg.norm(v) > 0.1)


# ----------------------------------------------------------------------------- transforms

@SETTINGS
@given(rigid, point, st.lists(point, min_size=1, max_size=8))
def test_transform_composed_with_inverse_is_identity(p, center, pts):
    M = geometry.rigid_matrix(p, center)
    Minv = np.linalg.inv(M)
    np.testing.assert_allclose(M @ Minv, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(Minv @ M, np.eye(4), atol=1e-9)
    # the inverse of a rigid map is rigid: [R^T, -R^T t]
    R, t = M[:3, :3], M[:3, 3]
    np.testing.assert_allclose(Minv[:3, :3], R.T, atol=1e-9)
    np.testing.assert_allclose(Minv[:3, 3], -R.T @ t, atol=1e-7)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    P = np.asarray(pts)
    np.testing.assert_allclose(geometry.apply(Minv, geometry.apply(M, P)), P, atol=1e-7)
    # distances are preserved
    if len(P) > 1:
        d0 = np.linalg.norm(P[1:] - P[:1], axis=1)
        d1 = np.linalg.norm(geometry.apply(M, P)[1:] - geometry.apply(M, P)[:1], axis=1)
        np.testing.assert_allclose(d0, d1, atol=1e-7)


@SETTINGS
@given(rigid, point)
def test_rigid_params_round_trip(p, center):
    M = geometry.rigid_matrix(p, center)
    q = geometry.rigid_params(M, center)
    np.testing.assert_allclose(geometry.rigid_matrix(q, center), M, atol=1e-8)
    np.testing.assert_allclose(q[3:], p[3:], atol=1e-6)
    assert geometry.rotation_angle_deg(M @ np.linalg.inv(M)) == pytest.approx(0.0, abs=1e-4)


@SETTINGS
@given(rigid, rigid, point)
def test_composition_is_associative_with_points(p1, p2, x):
    A, B = geometry.rigid_matrix(p1), geometry.rigid_matrix(p2)
    x = np.asarray(x)
    np.testing.assert_allclose(geometry.apply(A @ B, x), geometry.apply(A, geometry.apply(B, x)), atol=1e-7)
    # (AB)^-1 = B^-1 A^-1
    np.testing.assert_allclose(np.linalg.inv(A @ B), np.linalg.inv(B) @ np.linalg.inv(A), atol=1e-8)


@SETTINGS
@given(rigid, rigid, point)
def test_ras_lps_conversion(p1, p2, x):
    A, B = geometry.rigid_matrix(p1), geometry.rigid_matrix(p2)
    # an involution and a homomorphism
    np.testing.assert_allclose(geometry.ras_to_lps(geometry.ras_to_lps(A)), A, atol=1e-12)
    np.testing.assert_allclose(geometry.ras_to_lps(A @ B), geometry.ras_to_lps(A) @ geometry.ras_to_lps(B),
                               atol=1e-8)
    # the LPS map moves the LPS image of a point to the LPS image of its RAS destination
    flip = np.array([-1.0, -1.0, 1.0])
    x = np.asarray(x)
    np.testing.assert_allclose(geometry.apply(geometry.ras_to_lps(A), x * flip), geometry.apply(A, x) * flip,
                               atol=1e-7)
    # our contract <-> ITK's fixed->moving LPS map, both ways
    itk = geometry.to_itk_fixed_to_moving(A)
    np.testing.assert_allclose(geometry.from_itk_fixed_to_moving(itk), A, atol=1e-8)
    y = geometry.apply(A, x)  # a moving point lands at y in the fixed world
    np.testing.assert_allclose(geometry.apply(itk, y * flip) * flip, x, atol=1e-7)


@FEW
@given(rigid)
def test_itk_tfm_file_round_trip(tmp_path_factory, p):
    M = geometry.rigid_matrix(p, (10.0, -20.0, 30.0))
    path = tmp_path_factory.mktemp("tfm") / "t.tfm"
    geometry.write_itk_tfm(M, path)
    np.testing.assert_allclose(geometry.read_itk_tfm(path), M, atol=1e-6)


# ----------------------------------------------------------------------------- resampling

def _smooth_volume(shape, affine, seed=0):
    """A smooth (quadratic) intensity field in world coordinates: linear interpolation is nearly exact."""
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    w = idx @ affine[:3, :3].T + affine[:3, 3]
    rng = np.random.default_rng(seed)
    a = rng.normal(size=3)
    val = 100 + w @ a + 0.001 * (w ** 2).sum(axis=1)
    return Volume(val.reshape(shape).astype(np.float32), affine)


def _grid_affine(rot_axis, rot_deg, sp, origin):
    A = np.eye(4)
    A[:3, :3] = _random_rotation(rot_axis, rot_deg) @ np.diag(sp)
    A[:3, 3] = origin
    return A


@SETTINGS
@given(rigid, unit_axis, st.floats(0, 180), st.tuples(spacing, spacing, spacing), point)
def test_resampling_onto_the_transformed_grid_reproduces_the_volume(p, ax, deg, sp, origin):
    """If the fixed grid is the moving grid carried by M, resampling moving onto fixed through M is a copy."""
    shape = (7, 6, 5)
    mov = _smooth_volume(shape, _grid_affine(ax, deg, sp, origin))
    M = geometry.rigid_matrix(p, mov.center_world())
    fixed = Volume(np.zeros(shape, np.float32), M @ mov.affine)
    on_fixed = geometry.moving_onto_fixed(mov, fixed, M, order=1)
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(on_fixed.array[inner], mov.array[inner], rtol=1e-4, atol=1e-2)
    # and the other direction brings it back
    back = geometry.fixed_onto_moving(on_fixed, mov, M, order=1)
    np.testing.assert_allclose(back.array[inner], mov.array[inner], rtol=1e-4, atol=1e-2)


@SETTINGS
@given(st.tuples(st.floats(-15, 15), st.floats(-15, 15), st.floats(-15, 15)),
       st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3)), unit_axis, st.floats(0, 90))
def test_resampling_round_trip_through_a_transform_and_back(rot_deg, shift, ax, grid_deg):
    """Resample to a transformed copy of the grid and back: smooth content survives in the interior."""
    shape = (20, 20, 20)
    aff = _grid_affine(ax, grid_deg, (1.0, 1.0, 1.0), (0, 0, 0))
    vol = _smooth_volume(shape, aff)
    M = geometry.rigid_matrix((*np.radians(rot_deg), *shift), vol.center_world())
    there = Volume(geometry.resample(vol, shape, aff, np.linalg.inv(M), order=1), aff)
    back = geometry.resample(there, shape, aff, M, order=1)
    # voxels that stayed inside the grid both ways
    ok = geometry.inside_mask(shape, aff, shape, aff, np.linalg.inv(M), margin=-1.5) & \
        geometry.inside_mask(shape, aff, shape, aff, M, margin=-1.5)
    ok[:2] = ok[-2:] = False
    ok[:, :2] = ok[:, -2:] = False
    ok[:, :, :2] = ok[:, :, -2:] = False
    assume(ok.sum() > 50)
    err = np.abs(back - vol.array)[ok]
    scale = float(np.ptp(vol.array))
    assert float(err.max()) < 0.03 * scale + 0.5


@SETTINGS
@given(st.lists(st.integers(0, 5), min_size=60, max_size=60), rigid)
def test_nearest_resampling_never_invents_labels(vals, p):
    arr = np.asarray(vals, dtype=np.int32).reshape(5, 4, 3)
    lab = Volume(arr, np.diag([2.0, 2.0, 3.0, 1.0]))
    M = geometry.rigid_matrix((p[0] / 10, p[1] / 10, p[2] / 10, p[3] / 50, p[4] / 50, p[5] / 50),
                              lab.center_world())
    out = geometry.resample(lab, (6, 5, 4), lab.affine, M, order=0, dtype=np.int32)
    assert set(np.unique(out)) <= set(np.unique(arr)) | {0}


@SETTINGS
@given(unit_axis, st.floats(0, 180), st.tuples(spacing, spacing, spacing), point,
       st.lists(point, min_size=1, max_size=5))
def test_voxel_world_round_trip(ax, deg, sp, origin, pts):
    v = Volume(np.zeros((3, 3, 3), np.float32), _grid_affine(ax, deg, sp, origin))
    P = np.asarray(pts)
    np.testing.assert_allclose(v.voxel_to_world(v.world_to_voxel(P)), P, atol=1e-7)
    np.testing.assert_allclose(v.spacing, sp, rtol=1e-9)


# ----------------------------------------------------------------------------- orientation detection

PLANE_NORMAL = {"sagittal": 0, "coronal": 1, "axial": 2}  # RAS axis of the slice normal


@SETTINGS
@given(st.sampled_from(["axial", "coronal", "sagittal"]), st.permutations([0, 1, 2]),
       st.tuples(st.sampled_from([-1.0, 1.0]), st.sampled_from([-1.0, 1.0]), st.sampled_from([-1.0, 1.0])),
       unit_axis, st.floats(0, 40), st.floats(0.25, 1.0), st.floats(1.5, 8.0), st.integers(0, 2))
def test_plane_detection_under_random_rotations(want, perm, signs, ax, deg, inplane, thick, slice_ax):
    """A stack tilted by < 45 deg from its plane, with axes in any order and sign, is still recognised."""
    normal = PLANE_NORMAL[want]
    in_plane = [a for a in range(3) if a != normal]
    # voxel axis slice_ax points along the normal; the other two along the in-plane RAS axes (permuted)
    order = [None, None, None]
    order[slice_ax] = normal
    rest = [i for i in range(3) if i != slice_ax]
    if perm[0] % 2:
        in_plane = in_plane[::-1]
    order[rest[0]], order[rest[1]] = in_plane
    D = np.zeros((3, 3))
    for i, ras in enumerate(order):
        D[ras, i] = signs[i]
    sp = np.full(3, inplane)
    sp[slice_ax] = thick
    R = _random_rotation(ax, deg)
    A = np.eye(4)
    A[:3, :3] = R @ D @ np.diag(sp)
    v = Volume(np.zeros((4, 4, 4), np.float32), A)
    assert slice_axis(v) == slice_ax
    assert plane(v) == want
    assert obliquity_deg(v) <= deg + 1e-6


@SETTINGS
@given(st.floats(50, 90))
def test_a_coronal_stack_turned_past_45_degrees_is_not_called_coronal(deg):
    """Rotating the slice normal A by >45 deg towards S makes it axial; the detector must follow."""
    D = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]).T  # coronal: i->L, j->S, k->A
    R = _random_rotation((1.0, 0.0, 0.0), -deg)  # about R: A turns towards S
    A = np.eye(4)
    A[:3, :3] = R @ D @ np.diag([1.0, 1.0, 4.0])
    v = Volume(np.zeros((4, 4, 4), np.float32), A)
    assert plane(v) == "axial"
