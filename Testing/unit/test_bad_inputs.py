"""Bad inputs through the CLI (`mmreg register`): each gives its one-line error on stderr and a non-zero
exit code, writes nothing (no output folder, no temporary file), and leaves the inputs untouched
(same bytes, same mtime). Checkpoint refusals (tampered, foreign, pickle with code) are checked
here at the CLI level; their unit tests belong to test_translate."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from MultimodalRegistrationLib import cli

ROOT = Path(__file__).resolve().parents[2]

COR = np.array([[-1.0, 0, 0, 20], [0, 0, 3.0, -10], [0, 1.0, 0, -20], [0, 0, 0, 1]])  # slices along A
AX = np.diag([1.0, 1.0, 3.0, 1.0])                                                    # slices along S
AX[:3, 3] = [-20, -20, -10]


def _img(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = np.indices(shape).sum(axis=0).astype(np.float32)
    return x + rng.random(shape).astype(np.float32) * 5


def _save(path: Path, arr, aff=np.eye(4), dtype=None) -> Path:
    arr = np.asarray(arr)
    if dtype is not None:
        arr = arr.astype(dtype)
    nib.save(nib.Nifti1Image(arr, aff), str(path))
    return path


@pytest.fixture
def case(tmp_path):
    """A valid tiny coronal/axial pair with labels, in tmp_path/in."""
    d = tmp_path / "in"
    d.mkdir()
    return {
        "coronal": _save(d / "cor.nii.gz", _img((24, 24, 6)), COR),
        "axial": _save(d / "ax.nii.gz", _img((24, 24, 8), 1), AX),
        "coronal_labels": _save(d / "cor_lab.nii.gz", (_img((24, 24, 6)) > 20).astype(np.uint8), COR),
        "axial_labels": _save(d / "ax_lab.nii.gz", (_img((24, 24, 8), 1) > 20).astype(np.uint8), AX),
        "dir": d,
    }


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _register(capsys, case, out, *extra, coronal=None, axial=None, labels=()):
    argv = ["register", "--coronal", str(coronal or case["coronal"]), "--axial", str(axial or case["axial"]),
            "--out", str(out), "--translator", "none", "--no-figure", "--progress", "none", "--device", "cpu"]
    for role in labels:
        argv += [f"--{role.replace('_', '-')}", str(case[role])]
    rc = cli.main(argv + list(extra))
    cap = capsys.readouterr()
    return rc, cap


def _assert_refused(tmp_path, capsys, case, match, *, expect_warning=None, **kw):
    before = _snapshot(tmp_path)
    out = tmp_path / "out"
    if expect_warning:
        with pytest.warns(UserWarning, match=expect_warning):
            rc, cap = _register(capsys, case, out, *kw.pop("extra", ()), **kw)
    else:
        rc, cap = _register(capsys, case, out, *kw.pop("extra", ()), **kw)
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith("warning:")]
    assert rc == 2, (rc, cap.err)
    assert len(errors) == 1, f"expected one error line, got: {cap.err!r}"
    assert errors[0].startswith("mmreg register: error: "), errors[0]
    assert match in errors[0], errors[0]
    assert "Traceback" not in cap.err
    assert not out.exists(), "nothing may be written for a bad input"
    assert _snapshot(tmp_path) == before, "inputs changed or files were written"
    return errors[0]


# ----------------------------------------------------------------------------- file-level problems

def test_missing_file(tmp_path, capsys, case):
    _assert_refused(tmp_path, capsys, case, "does not exist", coronal=tmp_path / "in" / "nope.nii.gz")


def test_a_folder_instead_of_a_file(tmp_path, capsys, case):
    _assert_refused(tmp_path, capsys, case, "is a folder", axial=case["dir"])


def test_not_nifti(tmp_path, capsys, case):
    p = case["dir"] / "notes.nii.gz"
    p.write_text("hello, I am a text file\n" * 20)
    _assert_refused(tmp_path, capsys, case, "not a readable NIfTI", coronal=p)
    png = case["dir"] / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    _assert_refused(tmp_path, capsys, case, "picture.png", axial=png)


def test_truncated_gzip(tmp_path, capsys, case):
    data = case["coronal"].read_bytes()
    p = case["dir"] / "cut.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path, capsys, case, "truncated or corrupt", coronal=p)


def test_corrupt_gzip_stream(tmp_path, capsys, case):
    raw = gzip.decompress(case["axial"].read_bytes())
    comp = bytearray(gzip.compress(raw))
    comp[len(comp) // 2] ^= 0xFF  # flip bits inside the deflate stream
    p = case["dir"] / "flipped.nii.gz"
    p.write_bytes(bytes(comp))
    _assert_refused(tmp_path, capsys, case, "flipped.nii.gz", axial=p)


# ----------------------------------------------------------------------------- shapes and values

def test_2d(tmp_path, capsys, case):
    p = _save(case["dir"] / "flat.nii.gz", _img((24, 24)))
    _assert_refused(tmp_path, capsys, case, "2 dimensions", coronal=p)


def test_single_slice(tmp_path, capsys, case):
    p = _save(case["dir"] / "one.nii.gz", _img((24, 24, 1)), AX)
    _assert_refused(tmp_path, capsys, case, "single slice", axial=p)


def test_4d(tmp_path, capsys, case):
    p = _save(case["dir"] / "four.nii.gz", _img((24, 24, 6, 3)), COR)
    _assert_refused(tmp_path, capsys, case, "4 dimensions", coronal=p)


def test_all_zero(tmp_path, capsys, case):
    p = _save(case["dir"] / "zero.nii.gz", np.zeros((24, 24, 8), np.float32), AX)
    _assert_refused(tmp_path, capsys, case, "constant", axial=p)


def test_all_nan(tmp_path, capsys, case):
    p = _save(case["dir"] / "nan.nii.gz", np.full((24, 24, 6), np.nan, np.float32), COR)
    _assert_refused(tmp_path, capsys, case, "no finite voxel", coronal=p)


def test_some_nan_inf_voxels_are_cleaned_with_a_warning(tmp_path, capsys, case):
    """Documented policy: a few NaN/Inf voxels are replaced by 0 with a warning (not refused). Here the
    axial file is bad too, so the run stops after the coronal was loaded and cleaned."""
    arr = _img((24, 24, 6))
    arr[0, 0, 0], arr[1, 1, 1], arr[2, 2, 2] = np.nan, np.inf, -np.inf
    cor = _save(case["dir"] / "somenan.nii.gz", arr, COR)
    ax = _save(case["dir"] / "zero.nii.gz", np.zeros((24, 24, 8), np.float32), AX)
    _assert_refused(tmp_path, capsys, case, "constant", coronal=cor, axial=ax,
                    expect_warning="3 NaN/Inf voxels replaced by 0")


def test_non_numeric_voxels(tmp_path, capsys, case):
    arr = np.zeros((24, 24, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    p = _save(case["dir"] / "rgb.nii.gz", arr, COR)
    _assert_refused(tmp_path, capsys, case, "rgb.nii.gz", coronal=p)


# ----------------------------------------------------------------------------- labels

def test_label_map_on_another_grid(tmp_path, capsys, case):
    shifted = COR.copy()
    shifted[:3, 3] += 5.0
    case["coronal_labels"] = _save(case["dir"] / "lab_shift.nii.gz", np.ones((24, 24, 6), np.uint8), shifted)
    _assert_refused(tmp_path, capsys, case, "another grid", labels=("coronal_labels",))
    case["axial_labels"] = _save(case["dir"] / "lab_shape.nii.gz", np.ones((12, 12, 8), np.uint8), AX)
    _assert_refused(tmp_path, capsys, case, "must share a grid", labels=("axial_labels",))


def test_non_integer_labels(tmp_path, capsys, case):
    case["axial_labels"] = _save(case["dir"] / "soft.nii.gz", _img((24, 24, 8)) / 7.0, AX)
    _assert_refused(tmp_path, capsys, case, "non-integer values", labels=("axial_labels",))


def test_negative_labels(tmp_path, capsys, case):
    case["coronal_labels"] = _save(case["dir"] / "neg.nii.gz", -np.ones((24, 24, 6), np.int16), COR)
    _assert_refused(tmp_path, capsys, case, "negative labels", labels=("coronal_labels",))


# ----------------------------------------------------------------------------- orientation and spacing

def test_coronal_given_as_axial_and_vice_versa(tmp_path, capsys, case):
    err = _assert_refused(tmp_path, capsys, case, "--force-orientation", coronal=case["axial"], axial=case["coronal"])
    assert "axial slices" in err or "coronal slices" in err


def test_force_orientation_skips_the_orientation_check(tmp_path, capsys, case):
    """With --force-orientation the swapped pair passes the orientation check; a later problem (here a
    label map on another grid) is what gets reported."""
    case["axial_labels"] = _save(case["dir"] / "lab.nii.gz", np.ones((5, 5, 5), np.uint8), AX)
    err = _assert_refused(tmp_path, capsys, case, "must share a grid", coronal=case["axial"], axial=case["coronal"],
                          labels=("axial_labels",), extra=("--force-orientation",))
    assert "force-orientation" not in err


@pytest.mark.parametrize("sp,what", [((0.5, 0.5, 0.01), "thin"), ((0.001, 0.001, 3.0), "tiny"),
                                      ((1.0, 1.0, 50.0), "thick"), ((500.0, 1.0, 3.0), "huge")])
def test_absurd_spacings(tmp_path, capsys, case, sp, what):
    aff = AX.copy()
    aff[:3, :3] = np.diag(sp)
    p = _save(case["dir"] / f"{what}.nii.gz", _img((24, 24, 8)), aff)
    _assert_refused(tmp_path, capsys, case, "outside the plausible range", axial=p)


def test_singular_affine(tmp_path, capsys, case):
    aff = COR.copy()
    aff[:3, 2] = aff[:3, 1]  # two voxel axes point the same way
    p = _save(case["dir"] / "singular.nii", _img((24, 24, 6)), aff)
    nib.load(str(p))
    _assert_refused(tmp_path, capsys, case, "singular.nii", coronal=p)


def test_too_large_for_memory_is_refused_up_front(tmp_path, case):
    """The size check reads the header only (MMREG_MAX_VOLUME_BYTES is read at start-up: a child process)."""
    before = _snapshot(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, MMREG_MAX_VOLUME_BYTES=str(4096),
               PYTHONPATH=str(ROOT / "MultimodalRegistration") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "MultimodalRegistrationLib", "register", "--coronal",
                        str(case["coronal"]), "--axial", str(case["axial"]), "--out", str(out),
                        "--translator", "none", "--progress", "none"], env=env, capture_output=True, text=True,
                       timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1 and "MMREG_MAX_VOLUME_BYTES" in errors[0] and "GiB" in errors[0], r.stderr
    assert not out.exists() and _snapshot(tmp_path) == before


def test_huge_header_is_refused_without_reading_voxels(tmp_path, capsys, case):
    """A 4096^3 header with almost no data: the estimate from the header refuses it at once."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(AX, code=1)
    hdr.set_sform(AX, code=1)
    p = case["dir"] / "huge.nii"
    p.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024)
    _assert_refused(tmp_path, capsys, case, "GiB as float32", axial=p)


# ----------------------------------------------------------------------------- checkpoints

def _tiny_checkpoint(folder: Path) -> Path:
    from MultimodalRegistrationLib import translate
    from MultimodalRegistrationLib.nicegan import InferenceModel, NiceGanConfig

    model = InferenceModel(NiceGanConfig(ch=4, n_res=1, img_size=32))
    return translate.save_checkpoint(model, folder / "tiny.safetensors", training={"note": "test"})


def _register_with(tmp_path, capsys, case, ckpt, match):
    return _assert_refused(tmp_path, capsys, case, match, extra=("--translator", str(ckpt)))


def test_valid_tiny_checkpoint_loads(tmp_path):
    from MultimodalRegistrationLib import translate
    ckpt = _tiny_checkpoint(tmp_path)
    t = translate.load_translator(str(ckpt), device="cpu")
    assert t is not None


def test_tampered_checkpoint(tmp_path, capsys, case):
    ckpt = _tiny_checkpoint(case["dir"])
    data = bytearray(ckpt.read_bytes())
    data[-10] ^= 0x01  # one bit of one weight
    ckpt.write_bytes(bytes(data))
    _register_with(tmp_path, capsys, case, ckpt, "does not match its sidecar")


def test_foreign_checkpoint_sidecar_and_weights(tmp_path, capsys, case):
    from safetensors.numpy import save_file
    from MultimodalRegistrationLib import translate

    ckpt = _tiny_checkpoint(case["dir"])
    side = translate.sidecar_path(ckpt)
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "format": "someone-elses-gan"}))
    _register_with(tmp_path, capsys, case, ckpt, "foreign checkpoint")
    # a safetensors file of another network, with a sidecar that (honestly) hashes it
    other = case["dir"] / "other.safetensors"
    save_file({"conv1.weight": np.zeros((3, 3), np.float32)}, str(other))
    translate.sidecar_path(other).write_text(json.dumps({**meta, "sha256": translate.sha256_file(other)}))
    _register_with(tmp_path, capsys, case, other, "does not hold this architecture's weights")
    # no sidecar at all
    lone = case["dir"] / "lone.safetensors"
    lone.write_bytes(other.read_bytes())
    _register_with(tmp_path, capsys, case, lone, "sidecar")


class _Payload:
    """Unpickling this object creates a folder: proof that code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.makedirs, (self.target,))


@pytest.mark.parametrize("kind", ["pickle_named_safetensors", "torch_save_zip", "pickle_protocol0_with_sidecar",
                                  "pickle_pt_suffix"])
def test_pickle_checkpoint_with_code_is_refused_and_never_run(tmp_path, capsys, case, kind):
    from MultimodalRegistrationLib import translate

    sentinel = tmp_path / "PWNED"
    ckpt = _tiny_checkpoint(case["dir"])
    meta = json.loads(translate.sidecar_path(ckpt).read_text())
    if kind == "pickle_named_safetensors":
        p = case["dir"] / "evil.safetensors"
        p.write_bytes(pickle.dumps(_Payload(sentinel), protocol=4))
        translate.sidecar_path(p).write_text(json.dumps({**meta, "sha256": translate.sha256_file(p)}))
    elif kind == "torch_save_zip":
        import torch
        p = case["dir"] / "evil2.safetensors"
        torch.save({"x": _Payload(sentinel)}, str(p))
        translate.sidecar_path(p).write_text(json.dumps({**meta, "sha256": translate.sha256_file(p)}))
    elif kind == "pickle_protocol0_with_sidecar":
        p = case["dir"] / "evil3.safetensors"
        p.write_bytes(pickle.dumps(_Payload(sentinel), protocol=0))
        translate.sidecar_path(p).write_text(json.dumps({**meta, "sha256": translate.sha256_file(p)}))
    else:
        p = case["dir"] / "evil.pt"
        p.write_bytes(pickle.dumps(_Payload(sentinel), protocol=2))
    assert not sentinel.exists()
    err = _register_with(tmp_path, capsys, case, p, p.name)
    assert "refused" in err or "not a readable safetensors" in err, err
    assert not sentinel.exists(), "the pickle's code ran"


# ----------------------------------------------------------------------------- real scanner files

@pytest.mark.data("brats/TCGA-FG-6692_native/t1c_ax5.5mm_hdbet.nii.gz")
def test_real_axial_stack_given_as_coronal(tmp_path, capsys, case, data_root):
    """A real thick-slice axial acquisition (TCGA-FG-6692, 5.5 mm) passed as the coronal input."""
    src = data_root / "brats" / "TCGA-FG-6692_native" / "t1c_ax5.5mm_hdbet.nii.gz"
    before = {str(src): (hashlib.sha256(src.read_bytes()).hexdigest(), src.stat().st_mtime_ns)}
    err = _assert_refused(tmp_path, capsys, case, "axial slices", coronal=src)
    assert "--force-orientation" in err
    assert {str(src): (hashlib.sha256(src.read_bytes()).hexdigest(), src.stat().st_mtime_ns)} == before


def test_qform_sform_disagreement_and_shear_warn_and_reach_the_report(tmp_path):
    """A usable but suspicious header loads with a HeaderWarning that names the header used."""
    import warnings

    import nibabel as nib

    from MultimodalRegistrationLib.volume import HeaderWarning, load_volume

    arr = np.random.default_rng(0).random((20, 20, 8)).astype(np.float32)
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    img = nib.Nifti1Image(arr, aff)
    q = aff.copy()
    q[:3, 3] += [20.0, 0.0, 0.0]
    img.set_qform(q, code=1)
    img.set_sform(aff, code=1)
    p = tmp_path / "disagree.nii.gz"
    nib.save(img, str(p))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        v = load_volume(p)
    msgs = [str(w.message) for w in got if issubclass(w.category, HeaderWarning)]
    assert len(msgs) == 1 and "20.0 mm" in msgs[0] and "the sform was used" in msgs[0]
    assert np.allclose(v.affine, aff)
    sheared = aff.copy()
    sheared[0, 1] = 0.2
    img2 = nib.Nifti1Image(arr, sheared)
    p2 = tmp_path / "shear.nii.gz"
    nib.save(img2, str(p2))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        load_volume(p2)
    assert any("shear" in str(w.message) for w in got if issubclass(w.category, HeaderWarning))
    with warnings.catch_warnings(record=True) as got:       # a clean header: no warning
        warnings.simplefilter("always")
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / "ok.nii.gz"))
        load_volume(tmp_path / "ok.nii.gz")
    assert not [w for w in got if issubclass(w.category, HeaderWarning)]


def test_input_warnings_leave_out_the_engine_modules_imported_meanwhile():
    """run_case imports torch and scipy on a thread while the inputs load: a warning raised in their
    files is not an input warning; one raised while reading the inputs (our loader, nibabel) is."""
    import scipy.optimize
    import torch

    from MultimodalRegistrationLib import pipeline, volume

    assert pipeline._from_engine_modules(torch.__file__)
    assert pipeline._from_engine_modules(scipy.optimize.__file__)
    assert not pipeline._from_engine_modules(volume.__file__)
    import nibabel
    assert not pipeline._from_engine_modules(nibabel.__file__)
