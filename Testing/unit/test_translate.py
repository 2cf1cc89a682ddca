"""Translator API: checkpoint safety (hash, foreign files, pickle), geometry, directions, bundled model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402  (a hard dependency)

from MultimodalRegistrationLib import translate  # noqa: E402
from MultimodalRegistrationLib.errors import CheckpointError, InputError  # noqa: E402
from MultimodalRegistrationLib.nicegan import InferenceModel, NiceGan, NiceGanConfig  # noqa: E402
from MultimodalRegistrationLib.volume import Volume, slice_axis  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MMREG_DATA", ROOT.parent / "shared" / "data"))
TINY = NiceGanConfig(ch=8, n_res=1, img_size=32)


@pytest.fixture()
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = NiceGan(TINY)
    path = translate.save_checkpoint(model, tmp_path / "tiny.safetensors", {"iterations": 0, "command": "test"})
    return path


def test_checkpoint_roundtrip_and_sidecar(tiny_ckpt):
    meta = json.loads(translate.sidecar_path(tiny_ckpt).read_text())
    assert meta["sha256"] == translate.sha256_file(tiny_ckpt)
    assert meta["config"] == TINY.to_dict()
    assert meta["normalisation"]["method"] == "percentile"
    tr = translate.load_translator(str(tiny_ckpt), "cpu")
    assert tr.name == "nicegan:tiny.safetensors"
    assert tr.info["sha256"] == meta["sha256"]
    json.dumps(tr.info)  # JSON-serialisable
    # only the inference weights (no discriminator heads) are in the file
    from safetensors.torch import load_file
    keys = load_file(str(tiny_ckpt)).keys()
    assert keys and all(k.split(".")[0] in ("encA", "encB", "decA", "decB") for k in keys)


def test_tampered_checkpoint_refused(tiny_ckpt):
    data = bytearray(tiny_ckpt.read_bytes())
    data[-10] ^= 0xFF
    tiny_ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        translate.load_translator(str(tiny_ckpt), "cpu")


def test_foreign_safetensors_refused(tiny_ckpt):
    from safetensors.torch import save_file
    save_file({"conv.weight": torch.zeros(3, 3)}, str(tiny_ckpt))
    side = translate.sidecar_path(tiny_ckpt)
    meta = json.loads(side.read_text())
    meta["sha256"] = translate.sha256_file(tiny_ckpt)  # a consistent hash, but the wrong tensors
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not hold this architecture"):
        translate.load_translator(str(tiny_ckpt), "cpu")


def test_wrong_shapes_refused(tiny_ckpt, tmp_path):
    other = translate.save_checkpoint(NiceGan(NiceGanConfig(ch=16, n_res=1, img_size=32)),
                                      tmp_path / "other.safetensors", {})
    side = translate.sidecar_path(other)
    meta = json.loads(side.read_text())
    meta["config"] = TINY.to_dict()
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shapes"):
        translate.load_translator(str(other), "cpu")


def test_pickle_and_missing_sidecar_refused(tiny_ckpt, tmp_path):
    pt = tmp_path / "model.pt"
    torch.save(InferenceModel(TINY).state_dict(), pt)
    with pytest.raises(CheckpointError, match="pickle"):
        translate.load_translator(str(pt), "cpu")
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pt.read_bytes())
    with pytest.raises(CheckpointError, match="pickle"):
        translate.load_translator(str(disguised), "cpu")
    translate.sidecar_path(tiny_ckpt).unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        translate.load_translator(str(tiny_ckpt), "cpu")


def _oblique_volume(shape=(40, 7, 30), spacing=(0.7, 4.0, 0.7)):
    rng = np.random.default_rng(1)
    th = np.radians(8)
    rot = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = [-12.0, 30.0, 5.0]
    arr = rng.normal(100, 20, shape).astype(np.float32)
    arr[:5] = 0.0
    return Volume(arr, aff)


def test_convert_keeps_geometry_and_uses_slice_axis(tiny_ckpt):
    vol = _oblique_volume()
    assert slice_axis(vol) == 1
    tr = translate.load_translator(str(tiny_ckpt), "cpu")
    calls = []
    out = tr.convert(vol, "ceT1-to-T2", progress=lambda s, d, t: calls.append((s, d, t)), batch_size=3)
    assert out.shape == vol.shape
    np.testing.assert_array_equal(out.affine, vol.affine)
    assert np.all(np.isfinite(out.array))
    # intensities mapped back into the input's robust range
    lo, hi = translate.robust_range(vol.array)
    assert out.array.min() >= lo - 1e-3 and out.array.max() <= hi + 1e-3
    # progress counts slices along the slice axis (7), in batches of 3
    assert calls[-1] == ("translate", 7, 7) and len(calls) == 1 + 3
    # slice j of the output depends only on slice j of the input (slice-by-slice along axis 1)
    vol2 = vol.with_array(vol.array.copy())
    # permute the voxels of slice 3: same histogram, so the per-volume normalisation is unchanged
    sl = vol2.array[:, 3, :].ravel().copy()
    vol2.array[:, 3, :] = np.random.default_rng(5).permutation(sl).reshape(40, 30)
    out2 = tr.convert(vol2, "ceT1-to-T2")
    changed = [not np.allclose(out.array[:, j], out2.array[:, j]) for j in range(7)]
    assert changed == [False, False, False, True, False, False, False]
    # both directions run and differ
    back = tr.convert(vol, "T2-to-ceT1")
    assert back.shape == vol.shape and not np.allclose(back.array, out.array)


def test_direction_and_device_validated(tiny_ckpt):
    tr = translate.load_translator(str(tiny_ckpt), "cpu")
    with pytest.raises(InputError):
        tr.convert(_oblique_volume(), "T1-to-FLAIR")
    with pytest.raises(InputError):
        translate.load_translator(str(tiny_ckpt), "tpu")


def test_none_translator_only_normalises():
    vol = _oblique_volume()
    tr = translate.load_translator("none")
    assert tr.name == "none"
    out = tr.convert(vol, "ceT1-to-T2")
    assert out.shape == vol.shape and np.allclose(out.affine, vol.affine)
    assert out.array.min() >= 0.0 and out.array.max() <= 1.0
    # a monotone rescaling of the input: the voxel order is kept
    flat_in, flat_out = vol.array.ravel(), out.array.ravel()
    i, j = np.argmax(flat_in), np.argmin(flat_in)
    assert flat_out[i] == 1.0 and flat_out[j] == 0.0


def test_square_resize_roundtrip():
    x = np.random.default_rng(0).random((2, 30, 50)).astype(np.float32)
    t, geom = translate.to_square(x, 50)
    assert tuple(t.shape) == (2, 1, 50, 50)
    np.testing.assert_allclose(translate.from_square(t, geom), x, atol=1e-6)


def test_default_checkpoint():
    path = translate.default_checkpoint_path()
    assert path.parent.name == "Models" and path.name.endswith(".safetensors")
    if path.exists():
        tr = translate.load_translator("default", "cpu")
        assert tr.name == f"nicegan:{path.name}" and tr.info["iterations"] > 0
        assert path.stat().st_size < 20 * 1024**2
    else:
        with pytest.raises(CheckpointError, match="no bundled"):
            translate.load_translator("default", "cpu")


def test_bundled_gan_beats_unconverted_on_rendered_pair():
    """A rendered ceT1/T2 pair (never in the training set: fresh seed): converting the ceT1
    slices lands closer (MSE) to their T2 pairs than the unconverted slices are."""
    path = translate.default_checkpoint_path()
    assert path.exists(), f"the bundled checkpoint is missing: {path}"
    from MultimodalRegistrationLab import synth
    rng = np.random.default_rng(987654)
    a, b, aff, _ = synth.render_mni_pair(rng, synth.mni_tissues(step=2))  # 2 mm grid: fast
    tr = translate.load_translator("default", "cpu")
    # slices normalised as the checkpoint's sidecar says (tissue-peak for the issue-12 bundle)
    A, B = synth.extract_slices(a, b, aff, 6, rng, 128, planes=(("coronal", 1.0),), augment=False,
                                norm=tr.meta["normalisation"])
    fake = tr.translate_slices(A, "ceT1-to-T2")
    mse_conv = float(np.mean((fake - B) ** 2))
    mse_raw = float(np.mean((A - B) ** 2))
    assert mse_conv < 0.3 * mse_raw, (mse_conv, mse_raw)  # observed 0.0098 vs 0.073 (0.13)


def test_head_mask_keeps_dark_interior_and_zeroes_air(tiny_ckpt):
    s = np.zeros((1, 40, 40), np.float32)
    yy, xx = np.mgrid[:40, :40]
    ring = ((yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2)
    s[0][ring] = 0.6
    s[0][((yy - 20) ** 2 + (xx - 20) ** 2 < 5 ** 2)] = 0.0   # dark "ventricle" inside the head
    m = translate.head_masks(s)[0]
    assert m[20, 20] and m[20, 8] and not m[0, 0] and not m[20, 39]
    tr = translate.load_translator(str(tiny_ckpt), "cpu")
    out = tr.translate_slices(s, "ceT1-to-T2")
    assert np.all(out[0][~m] == 0.0)
    tr.zero_background = False
    assert np.any(tr.translate_slices(s, "ceT1-to-T2")[0][~m] != 0.0)


def test_gan_evaluation_metrics_behave():
    """evaluate-gan's per-slice metrics: identity gives the ideal values, an inverted contrast gives
    NCC -1 in the head, noise lowers PSNR/SSIM, an empty slice gives nan (left out of the stats)."""
    from MultimodalRegistrationLab.evaluate_gan import head_ncc, mse255, psnr255, ssim255, stats

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    head = ((yy - 32) ** 2 + (xx - 32) ** 2) < 24 ** 2
    img = np.where(head, 0.3 + 0.5 * rng.random((64, 64)), 0.0)
    assert mse255(img, img) == 0 and psnr255(img, img) == float("inf")
    assert ssim255(img, img) == pytest.approx(1.0)
    assert head_ncc(img, 0.5 * img + 0.1 * head) == pytest.approx(1.0)
    inverted = np.where(head, 1.1 - img, 0.0)
    assert head_ncc(inverted, img) == pytest.approx(-1.0)     # background left out: pure inversion
    noisy = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1)
    assert 10 < psnr255(noisy, img) < 30 and ssim255(noisy, img) < 0.9
    assert np.isnan(head_ncc(np.zeros((8, 8)), np.zeros((8, 8))))
    s = stats([1.0, float("nan"), 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0


def test_evaluate_gan_rejects_a_malformed_render_case(tmp_path):
    from MultimodalRegistrationLib.errors import InputError
    from MultimodalRegistrationLab.evaluate_gan import evaluate
    from MultimodalRegistrationLib.translate import load_translator

    tr = load_translator("default", device="cpu")
    for bad in ("render:x", "render:3:unstripped", "render:1:2:3"):
        with pytest.raises(InputError, match="render case"):
            evaluate(tr, cases=(bad,), out_dir=tmp_path / "r")


# ----------------------------------------------------------------------------- tissue-peak normalisation (issue 12)

def _head_phantom(with_skull: bool, spacing=(1.0, 1.0, 3.0)):
    """A brain (WM core 100, GM shell 70, CSF ventricles 20, bright vessels) and, with skull, a dark
    bone shell (10) and a thick bright scalp (fat 180) around it; anisotropic spacing."""
    sp = np.asarray(spacing)
    shape = (150, 170, 60)
    ijk = np.indices(shape).astype(np.float64)
    c = (np.asarray(shape) - 1) / 2
    r = np.sqrt(sum(((ijk[i] - c[i]) * sp[i] / s) ** 2 for i, s in enumerate((60, 70, 55))))
    x = np.zeros(shape, np.float32)
    x[r < 1.0] = 70.0                         # GM
    x[r < 0.8] = 100.0                        # WM
    vent = np.sqrt(sum(((ijk[i] - c[i]) * sp[i] / s) ** 2 for i, s in enumerate((8, 20, 12)))) < 1
    x[vent] = 20.0                            # ventricles (dark on T1)
    x[(r < 0.95) & (np.abs((ijk[0] - c[0]) * sp[0]) < 1.5)] = 160.0  # a bright enhancing midline vessel
    if with_skull:
        x[(r >= 1.0) & (r < 1.12)] = 10.0     # bone
        x[(r >= 1.12) & (r < 1.35)] = 180.0   # scalp fat
    rng = np.random.default_rng(3)
    x = np.abs(x + rng.normal(0, 3.0, shape)).astype(np.float32)
    return x, sp, (r < 0.95) & ~vent


def test_tissue_peak_makes_with_skull_and_stripped_alike():
    """The same brain with and without skull: the tissue-peak normalisation gives the same brain
    intensities (the WM peak is found in both); the old percentile one does not (the scalp sets hi)."""
    ws, sp, brain = _head_phantom(True)
    st, _, _ = _head_phantom(False)
    norm = translate.tissue_peak_normalisation()
    ref_ws, ref_st = translate.tissue_peak(ws, sp), translate.tissue_peak(st, sp)
    assert ref_ws == pytest.approx(100.0, rel=0.05) and ref_st == pytest.approx(100.0, rel=0.05)
    med = {}
    for name, n in (("old", translate.NORMALISATION), ("new", norm)):
        a = translate.normalise01(ws, *translate.volume_scale(ws, sp, n, "A"))[brain]
        b = translate.normalise01(st, *translate.volume_scale(st, sp, n, "A"))[brain]
        med[name] = float(np.median(a) / np.median(b))
    assert med["new"] == pytest.approx(1.0, abs=0.03)
    assert med["old"] < 0.75                      # what issue 12 measured on real data (0.58)
    # WM lands on the recorded target level
    wm = translate.normalise01(st, *translate.volume_scale(st, sp, norm, "A"))[brain]
    assert np.median(wm) == pytest.approx(norm["target"]["A"], rel=0.06)


def test_old_sidecar_keeps_percentile_new_sidecar_uses_tissue_peak(tiny_ckpt, tmp_path):
    ws, sp, _ = _head_phantom(True, spacing=(1.0, 1.0, 3.0))
    vol = Volume(ws[::3, ::3].copy(), np.diag([3.0, 3.0, 3.0, 1.0]))
    old = translate.load_translator(str(tiny_ckpt), "cpu")
    assert old.meta["normalisation"]["method"] == "percentile"
    model, _ = translate.load_checkpoint(tiny_ckpt)
    norm = translate.tissue_peak_normalisation()
    new_path = translate.save_checkpoint(model, tmp_path / "tp.safetensors", {"iterations": 0}, norm)
    new = translate.load_translator(str(new_path), "cpu")
    assert new.meta["normalisation"] == json.loads(json.dumps(norm))
    for tr, scale in ((old, translate.robust_range(vol.array)),
                      (new, translate.volume_scale(vol.array, vol.spacing, norm, "A"))):
        lo, hi = scale
        x01 = np.moveaxis(translate.normalise01(vol.array, lo, hi), 2, 0)
        expect = np.moveaxis(tr.translate_slices(np.ascontiguousarray(x01), "ceT1-to-T2"), 0, 2) * (hi - lo) + lo
        np.testing.assert_allclose(tr.convert(vol, "ceT1-to-T2").array, expect, rtol=1e-5, atol=1e-4)
    assert not np.allclose(old.convert(vol, "ceT1-to-T2").array, new.convert(vol, "ceT1-to-T2").array)
    # an unknown method in a sidecar is refused at load time
    side = translate.sidecar_path(new_path)
    meta = json.loads(side.read_text())
    meta["normalisation"]["method"] = "zscore"
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="normalisation"):
        translate.load_translator(str(new_path), "cpu")


def test_csf_check_metric():
    """CSF/GM/WM from the true ceT1 (k-means) and T2; a T2-like synthetic passes, a T1-like one fails."""
    from MultimodalRegistrationLab.evaluate_gan import csf_check, tissue_classes

    rng = np.random.default_rng(1)
    lab = rng.integers(0, 3, (40, 40, 10))                       # 0 CSF, 1 GM, 2 WM
    cet1 = np.choose(lab, [0.15, 0.45, 0.7]) + rng.normal(0, 0.03, lab.shape)
    t2 = np.choose(lab, [0.9, 0.45, 0.3]) + rng.normal(0, 0.03, lab.shape)
    brain = np.ones(lab.shape, bool)
    brain[:2] = False
    cls = tissue_classes(cet1, t2, brain)
    assert (cls["csf"] == ((lab == 0) & brain)).mean() > 0.99 and (cls["wm"] == ((lab == 2) & brain)).mean() > 0.99
    good = csf_check(t2 * 0.8, t2, cls)
    assert good["csf_above_gm_and_wm"] and good["true_T2_csf_above_gm_and_wm"]
    assert good["synthetic_T2_csf"] == pytest.approx(0.72, abs=0.01)
    bad = csf_check(cet1, t2, cls)                               # an identity "translation" keeps CSF dark
    assert not bad["csf_above_gm_and_wm"] and bad["csf_minus_brightest_other"] < -0.4
    mid = csf_check(np.choose(lab, [0.5, 0.6, 0.3]).astype(float), t2, cls)  # CSF above WM but not GM
    assert not mid["csf_above_gm_and_wm"]
