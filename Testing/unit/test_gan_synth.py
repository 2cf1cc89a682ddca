"""Training-data synthesis: rendered contrasts follow MRI physics; slices are paired, normalised, deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from MultimodalRegistrationLab import synth


@pytest.fixture(scope="module")
def rendered():
    base = synth.mni_tissues(step=2)  # 2 mm: fast
    a, b, aff, desc = synth.render_mni_pair(np.random.default_rng(11), base)
    return base[0], a, b, aff, desc


def test_rendered_contrasts_follow_spin_echo_physics(rendered):
    t, cet1, t2, aff, desc = rendered
    assert cet1.shape == t2.shape == t["gm"].shape
    wm, gm = t["wm"] > 0.9, t["gm"] > 0.9
    csf = (t["csf"] > 0.95) & ndi_erode(t["icv"])
    m = lambda img, mask: float(np.median(img[mask]))  # noqa: E731
    # T1-weighted: WM > GM > CSF ; T2-weighted: CSF > GM > WM
    assert m(cet1, wm) > m(cet1, gm) > m(cet1, csf)
    assert m(t2, csf) > m(t2, gm) > m(t2, wm)
    assert 400 <= desc["TR_T1"] <= 700 and 2500 <= desc["TR_T2"] <= 6000
    # the head outside the brain is rendered (scalp fat bright on T1) when the MNI head is available
    if (synth.default_data_root() / "real" / "MNI152_T1_2mm.nii.gz").exists():
        fat = t["fat"] > 0.8
        assert fat.sum() > 1000 and m(cet1, fat) > m(cet1, gm)


def test_skull_strip_keeps_the_brain_and_removes_the_rest(rendered):
    t, cet1, t2, aff, desc = rendered
    a, b = synth.skull_strip(cet1, t2, (t, aff))
    from scipy import ndimage as ndi
    inner = ndi.binary_erosion(t["icv"], iterations=3)
    outer = ~ndi_dilate(t["icv"])
    assert np.allclose(a[inner], cet1[inner], rtol=0.02) and np.allclose(b[inner], t2[inner], rtol=0.02)
    assert float(np.abs(a[outer]).max()) < 0.01 * float(cet1.max()) and float(np.abs(b[outer]).max()) < 0.01 * float(t2.max())
    if (synth.default_data_root() / "real" / "MNI152_T1_2mm.nii.gz").exists():
        assert float(cet1[outer].max()) > 0.1 * float(cet1.max())      # there was a scalp to remove


def ndi_dilate(mask):
    from scipy import ndimage as ndi
    return ndi.binary_dilation(mask, iterations=3)


def ndi_erode(mask):
    from scipy import ndimage as ndi
    return ndi.binary_erosion(mask, iterations=2)


def test_gadolinium_shortens_t1():
    T1, T2, PD, gd = synth.TISSUES["vessel"]
    tr, te = 500.0, 10.0
    pre = PD * (1 - np.exp(-tr / T1)) * np.exp(-te / T2)
    T1c = 1.0 / (1.0 / T1 + synth.R1_GD * gd[0] / 1000.0)
    post = PD * (1 - np.exp(-tr / T1c)) * np.exp(-te / T2)
    assert T1c < T1 / 3 and post > 2 * pre


def test_extract_slices_paired_normalised_deterministic():
    rng = np.random.default_rng(0)
    a = np.zeros((60, 70, 50), np.float32)
    a[10:50, 10:60, 5:45] = rng.random((40, 50, 40)) * 100 + 50
    b = 300.0 - a
    b[a == 0] = 0
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    xa, xb = synth.extract_slices(a, b, aff, 5, np.random.default_rng(3), size=32)
    ya, yb = synth.extract_slices(a, b, aff, 5, np.random.default_rng(3), size=32)
    assert xa.shape == xb.shape == (5, 32, 32)
    assert xa.min() >= 0 and xa.max() <= 1 and xb.min() >= 0 and xb.max() <= 1
    np.testing.assert_array_equal(xa, ya)
    # paired: the same pixels are foreground in both contrasts
    assert np.corrcoef((xa > 0.05).ravel(), (xb > 0.05).ravel())[0, 1] > 0.9
    # coronal-only sampling cuts along the voxel axis closest to A
    za, _ = synth.extract_slices(a, b, aff, 2, np.random.default_rng(1), size=32, planes=(("coronal", 1.0),),
                                 augment=False)
    assert za.shape == (2, 32, 32)
    assert synth._plane_axis(aff, "coronal") == 1 and synth._plane_axis(aff, "axial") == 2

