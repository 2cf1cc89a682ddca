import gzip

import numpy as np
import nibabel as nib
import pytest

from MultimodalRegistrationLib import geometry, metrics
from MultimodalRegistrationLib.errors import InputError
from MultimodalRegistrationLib.volume import (Volume, load_volume, plane, save_volume, slice_axis,
                                              check_labels_match)
from MultimodalRegistrationLab import simulate


def _affine(sp=(0.5, 0.5, 3.0)):
    A = np.diag([*sp, 1.0])
    A[:3, 3] = [-10, 20, -30]
    return A


def _write(path, arr, aff):
    nib.save(nib.Nifti1Image(arr, aff), str(path))
    return path


def test_roundtrip_keeps_affine_and_values(tmp_path, rng):
    R = geometry.rotation_matrix(0.05, -0.03, 0.1)
    A = _affine()
    A[:3, :3] = R @ A[:3, :3]
    arr = rng.random((20, 16, 7)).astype(np.float32)
    p = tmp_path / "v.nii.gz"
    save_volume(Volume(arr, A), p)
    v = load_volume(p)
    assert np.abs(v.affine - A).max() < 1e-6
    assert np.allclose(v.array, arr)
    assert not list(tmp_path.glob(".*part*")), "temporary file left behind"


@pytest.mark.parametrize("shape,msg", [((10, 10), "2 dimensions"), ((5, 5, 5, 3), "4 dimensions"),
                                       ((10, 10, 1), "single slice")])
def test_refuses_bad_dimensions(tmp_path, shape, msg):
    p = _write(tmp_path / "x.nii.gz", np.random.rand(*shape).astype(np.float32), np.eye(4))
    with pytest.raises(InputError, match=msg):
        load_volume(p)


def test_refuses_nan_only_constant_missing_truncated(tmp_path):
    p = _write(tmp_path / "nan.nii.gz", np.full((4, 4, 4), np.nan, np.float32), np.eye(4))
    with pytest.raises(InputError, match="no finite voxel"):
        load_volume(p)
    p = _write(tmp_path / "zero.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(InputError, match="constant"):
        load_volume(p)
    with pytest.raises(InputError, match="does not exist"):
        load_volume(tmp_path / "missing.nii.gz")
    good = _write(tmp_path / "good.nii.gz", np.random.rand(30, 30, 30).astype(np.float32), np.eye(4))
    raw = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated|corrupt|readable"):
        load_volume(tmp_path / "trunc.nii.gz")
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello"))
    with pytest.raises(InputError):
        load_volume(tmp_path / "text.nii.gz")


def test_nan_voxels_are_cleaned_with_warning(tmp_path):
    arr = np.random.rand(5, 5, 5).astype(np.float32)
    arr[1, 1, 1] = np.nan
    p = _write(tmp_path / "n.nii.gz", arr, np.eye(4))
    with pytest.warns(UserWarning, match="NaN"):
        v = load_volume(p)
    assert v.array[1, 1, 1] == 0 and np.isfinite(v.array).all()


def test_absurd_spacing_and_labels(tmp_path):
    p = _write(tmp_path / "thin.nii.gz", np.random.rand(5, 5, 5).astype(np.float32), np.diag([0.001, 1, 1, 1]))
    with pytest.raises(InputError, match="spacing"):
        load_volume(p)
    p = _write(tmp_path / "lab.nii.gz", np.random.rand(5, 5, 5).astype(np.float32), np.eye(4))
    with pytest.raises(InputError, match="non-integer"):
        load_volume(p, labels=True)
    img = Volume(np.zeros((5, 5, 5)), np.eye(4))
    lab = Volume(np.zeros((5, 5, 6)), np.eye(4))
    with pytest.raises(InputError, match="shape"):
        check_labels_match(lab, img)


def test_orientation_detection():
    case_dirs = simulate.CORONAL_DIRS
    A = simulate.stack_affine(np.zeros(3), case_dirs, (0.8, 0.8, 3.0), (10, 10, 5))
    v = Volume(np.zeros((10, 10, 5)), A)
    assert slice_axis(v) == 2 and plane(v) == "coronal"
    A = simulate.stack_affine(np.zeros(3), simulate.AXIAL_DIRS, (0.4, 0.4, 4.0), (10, 10, 5))
    assert plane(Volume(np.zeros((10, 10, 5)), A)) == "axial"


def test_rigid_params_roundtrip_and_itk_convention(tmp_path):
    c = np.array([3.0, -2.0, 10.0])
    params = np.array([0.1, -0.05, 0.2, 4.0, -3.0, 2.5])
    M = geometry.rigid_matrix(params, c)
    assert np.allclose(geometry.rigid_params(M, c), params)
    assert np.allclose(geometry.apply(M, c[None])[0], c + params[3:])
    geometry.write_itk_tfm(M, tmp_path / "t.tfm")
    assert np.allclose(geometry.read_itk_tfm(tmp_path / "t.tfm"), M, atol=1e-9)
    # The .tfm must hold ITK's fixed->moving LPS map: check with SimpleITK directly.
    import SimpleITK as sitk
    tx = sitk.ReadTransform(str(tmp_path / "t.tfm"))
    p_fixed_ras = np.array([10.0, 20.0, 30.0])
    p_moving_ras = geometry.apply(np.linalg.inv(M), p_fixed_ras[None])[0]
    lps = tx.TransformPoint(tuple(p_fixed_ras * [-1, -1, 1]))
    assert np.allclose(np.array(lps) * [-1, -1, 1], p_moving_ras, atol=1e-9)


def test_resample_identity_and_shift():
    arr = np.zeros((20, 20, 20), np.float32)
    arr[10, 10, 10] = 1
    v = Volume(arr, np.eye(4))
    shift = np.eye(4)
    shift[:3, 3] = [2, 0, 0]
    out = geometry.moving_onto_fixed(v, v, shift, order=0)
    assert out.array[12, 10, 10] == 1 and out.array[10, 10, 10] == 0
    back = geometry.fixed_onto_moving(out, v, shift, order=0)
    assert back.array[10, 10, 10] == 1


def test_simulated_truth_aligns_better_than_header(fast_case):
    c = fast_case
    assert plane(c.coronal_t2) == "coronal" and plane(c.axial_t2) == "axial"
    assert c.coronal_t2.spacing[2] >= 2.0 and c.axial_t2.spacing[2] >= 2.0
    # FOV sticks out: the coronal S extent exceeds the axial slab's.
    cor_s = c.coronal_t2.shape[1] * c.coronal_t2.spacing[1]
    ax_s = c.axial_t2.shape[2] * c.axial_t2.spacing[2]
    assert cor_s > ax_s

    def corr(M):
        r = geometry.moving_onto_fixed(c.coronal_t2, c.axial_t2, M).array
        m = geometry.inside_mask(c.coronal_t2.shape, c.coronal_t2.affine, c.axial_t2.shape, c.axial_t2.affine,
                                 np.linalg.inv(M)) & (c.axial_t2.array > 50)
        return np.corrcoef(r[m], c.axial_t2.array[m])[0, 1]

    assert corr(c.moving_to_fixed) > 0.75
    assert corr(c.moving_to_fixed) > corr(np.eye(4)) + 0.05
    pts = metrics.overlap_points(c.coronal_t2, c.axial_t2, c.moving_to_fixed)
    assert metrics.tre(c.moving_to_fixed, c.moving_to_fixed, pts)["max"] < 1e-9
    assert metrics.tre(np.eye(4), c.moving_to_fixed, pts)["mean"] > 0.5


@pytest.mark.parametrize("with_isal", [True, False])
def test_saved_nii_gz_holds_what_nibabel_writes(tmp_path, monkeypatch, with_isal):
    """save_volume compresses with ISA-L when installed, else zlib: either way the file decompresses to
    the single-file NIfTI nibabel itself writes."""
    import gzip
    import sys

    import nibabel as nib
    from MultimodalRegistrationLib.volume import save_volume

    if not with_isal:
        monkeypatch.setitem(sys.modules, "isal", None)      # import isal -> ImportError
    rng = np.random.default_rng(0)
    aff = np.diag([0.5, 0.5, 4.0, 1.0])
    aff[:3, 3] = (-90.0, -100.0, -30.0)
    vol = Volume(rng.normal(size=(20, 18, 5)).astype(np.float32), aff)
    ours = save_volume(vol, tmp_path / "a.nii.gz")
    img = nib.Nifti1Image(vol.array, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, tmp_path / "ref.nii.gz")
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress((tmp_path / "ref.nii.gz").read_bytes())
    back = nib.load(ours)
    assert np.array_equal(np.asarray(back.dataobj), vol.array) and np.allclose(back.affine, aff)
