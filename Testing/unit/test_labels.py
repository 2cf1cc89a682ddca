import numpy as np
import pytest

from MultimodalRegistrationLib import geometry, labels
from MultimodalRegistrationLib.errors import InputError
from MultimodalRegistrationLib.volume import Volume


def _ball_labels(shape=(40, 40, 40), center=(20, 20, 20), r=8):
    idx = np.indices(shape)
    d = np.sqrt(sum((idx[a] - center[a]) ** 2 for a in range(3)))
    lab = np.zeros(shape, np.int32)
    lab[d < r] = 3
    lab[(d < r) & (idx[0] > center[0])] = 5
    return lab


@pytest.mark.parametrize("mode", labels.MODES)
def test_transfer_through_known_shift_and_back(mode):
    src = Volume(_ball_labels(), np.eye(4))
    M = geometry.rigid_matrix([0, 0, np.radians(10), 3.0, -2.0, 1.0], center=(20, 20, 20))
    on_fixed = labels.moving_labels_onto_fixed(src, src, M, mode)
    expected = _ball_labels(center=geometry.apply(M, np.array([[20.0, 20, 20]]))[0])
    # Overlap of the moved ball with the analytically moved ball.
    inter = np.logical_and(on_fixed.array > 0, expected > 0).sum()
    assert 2 * inter / ((on_fixed.array > 0).sum() + (expected > 0).sum()) > 0.9
    assert set(np.unique(on_fixed.array)) <= {0, 3, 5}
    back = labels.fixed_labels_onto_moving(on_fixed, src, M, mode)
    for v in (3, 5):
        a, b = back.array == v, src.array == v
        assert 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) > 0.85


def test_thick_slice_labels_onto_fine_grid():
    # A thick-slice source (4 mm) carried onto a 1 mm grid follows the true ball in both modes.
    fine = _ball_labels((60, 60, 60), (30, 30, 30), 14)
    thick_aff = np.diag([1.0, 1.0, 4.0, 1.0])
    thick = Volume(geometry.resample(Volume(fine, np.eye(4)), (60, 60, 15), thick_aff, order=0, dtype=np.int32),
                   thick_aff)
    scores = {}
    for mode in labels.MODES:
        out = labels.transfer(thick, fine.shape, np.eye(4), mode=mode)
        a, b = out > 0, fine > 0
        scores[mode] = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    assert min(scores.values()) > 0.9


def test_identity_transfer_is_exact():
    lab = Volume(_ball_labels(), np.eye(4))
    for mode in labels.MODES:
        assert np.array_equal(labels.transfer(lab, lab.shape, lab.affine, mode=mode), lab.array)


def test_unknown_mode_and_color_table():
    with pytest.raises(InputError):
        labels.transfer(Volume(np.zeros((2, 2, 2), np.int32), np.eye(4)), (2, 2, 2), np.eye(4), mode="cubic")
    table = labels.color_table([0, 3, 5])
    lines = [ln for ln in table.splitlines() if not ln.startswith("#")]
    assert [ln.split()[0] for ln in lines] == ["0", "3", "5"]


def _full_grid_reference(lab: Volume, shape, affine, target_to_source):
    """Per-label linear + argmax over the whole target grid (what transfer() computed before it
    restricted the work to the labels' box)."""
    best = geometry.resample(Volume((lab.array == 0).astype(np.float32), lab.affine), shape, affine,
                             target_to_source, order=1, cval=1.0)
    out = np.zeros(shape, dtype=np.int32)
    for v in [int(x) for x in np.unique(lab.array) if x != 0]:
        w = geometry.resample(Volume((lab.array == v).astype(np.float32), lab.affine), shape, affine,
                              target_to_source, order=1)
        out[w > best] = v
        best = np.maximum(best, w)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_transfer_equals_the_whole_grid_computation(seed):
    rng = np.random.default_rng(seed)
    src = np.zeros((30, 28, 9), dtype=np.int32)
    src[5:12, 6:15, 2:6] = 1
    src[14:20, 3:9, 4:8] = 2
    src[0:3, 25:28, 7:9] = 5                      # touches the grid's corner
    src_affine = np.diag([0.9, 0.9, 3.0, 1.0])
    src_affine[:3, 3] = (-2.0, 1.0, 0.5)
    lab = Volume(src, src_affine)
    M = np.eye(4)
    M[:3, :3] = geometry.rotation_matrix(*np.deg2rad(rng.uniform(-20, 20, 3)))
    M[:3, 3] = rng.uniform(-4, 4, 3)
    shape, aff = (40, 33, 12), np.diag([0.7, 0.8, 2.5, 1.0])
    got = labels.transfer(lab, shape, aff, M, "linear")
    assert np.array_equal(got, _full_grid_reference(lab, shape, aff, M))
    assert set(np.unique(got)) >= {0, 1, 2}


def test_linear_transfer_of_labels_outside_the_target_is_background():
    src = np.zeros((10, 10, 4), dtype=np.int32)
    src[2:5, 2:5, 1:3] = 3
    far = np.eye(4)
    far[0, 3] = 500.0
    lab = Volume(src, far)
    assert not labels.transfer(lab, (8, 8, 4), np.eye(4), None, "linear").any()
    assert not labels.transfer(Volume(np.zeros((4, 4, 4), np.int32), np.eye(4)), (5, 5, 5), np.eye(4)).any()
