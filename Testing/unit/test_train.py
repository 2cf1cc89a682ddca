"""GAN training: a tiny run decreases the loss, resuming is exact, the export is a loadable checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

import torch  # noqa: E402  (a hard dependency)

from MultimodalRegistrationLib import translate  # noqa: E402
from MultimodalRegistrationLib.errors import CheckpointError  # noqa: E402
from MultimodalRegistrationLib.nicegan import NiceGanConfig  # noqa: E402
from MultimodalRegistrationLab.train import Trainer  # noqa: E402

TINY = NiceGanConfig(ch=8, n_res=1, img_size=32)


def _pairs(n=6, size=32, seed=0):
    """Blobs whose 'T2' has the inverted contrast of the 'ceT1' inside a head mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    A, B = [], []
    for _ in range(n):
        head = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < rng.uniform(0.12, 0.18)
        blob = np.exp(-(((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - rng.uniform(0.3, 0.7)) ** 2) / 0.01))
        a = head * (0.3 + 0.6 * blob)
        b = head * (0.9 - 0.6 * blob)
        A.append(a)
        B.append(b)
    return np.asarray(A, np.float32), np.asarray(B, np.float32)


def _val_mse(tr):
    return tr.validate()["val_mse_A2B"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_training_decreases_loss(tmp_path):
    A, B = _pairs()
    tr = Trainer(A, B, tmp_path, TINY, lr=2e-3, seed=0, val=(A, B))
    before = _val_mse(tr)
    first = [tr.step(i)["paired_l1"] for i in range(5)]
    tr.iteration = 5
    tr.run(60, log_every=20, sample_every=0, save_every_s=1e9, log=lambda m: None)
    last = [tr.step(i)["paired_l1"] for i in range(60, 65)]
    after = _val_mse(tr)
    assert after < 0.5 * before, (before, after)
    assert np.mean(last) < np.mean(first)
    lines = (tmp_path / "losses.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [20, 40, 60]


def test_resume_is_exact(tmp_path):
    A, B = _pairs(4)
    quiet = dict(log_every=5, sample_every=0, save_every_s=1e9, log=lambda m: None)
    ref = Trainer(A, B, tmp_path / "ref", TINY, lr=1e-3, seed=3)
    ref.run(8, **quiet)
    part = Trainer(A, B, tmp_path / "part", TINY, lr=1e-3, seed=3)
    part.run(4, **quiet)
    part.save_state()
    resumed = Trainer(A, B, tmp_path / "part", TINY, lr=1e-3, seed=3)
    assert resumed.load_state() and resumed.iteration == 4
    resumed.run(8, **quiet)
    sa, sb = ref.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    # another seed gives other weights (the comparison above can fail)
    other = Trainer(A, B, tmp_path / "other", TINY, lr=1e-3, seed=4)
    assert not torch.equal(other.model.state_dict()["decB.gamma.weight"], sa["decB.gamma.weight"])


def test_state_of_other_architecture_refused(tmp_path):
    A, B = _pairs(2)
    Trainer(A, B, tmp_path, TINY).save_state()
    with pytest.raises(CheckpointError, match="architecture"):
        Trainer(A, B, tmp_path, NiceGanConfig(ch=16, n_res=1, img_size=32)).load_state()


def test_export_is_loadable_checkpoint_with_provenance(tmp_path):
    A, B = _pairs(3)
    tr = Trainer(A, B, tmp_path, TINY, seed=1, command="mmreg train --test", data_desc={"pairs": 3})
    tr.run(3, log_every=1, sample_every=3, save_every_s=1e9, log=lambda m: None)
    path = tr.export()
    meta = json.loads(translate.sidecar_path(path).read_text())
    t = meta["training"]
    assert t["iterations"] == 3 and t["command"] == "mmreg train --test" and t["data"] == {"pairs": 3}
    assert t["wall_time_s"] >= 0 and "torch" in t["hardware"] and t["hyperparameters"]["lr"] == 1e-4
    assert (tmp_path / "samples_000003.png").stat().st_size > 1000
    gan = translate.load_translator(str(path), "cpu")
    assert gan.info["iterations"] == 3
    x = gan.translate_slices(A, "ceT1-to-T2")
    assert x.shape == A.shape and x.min() >= 0 and x.max() <= 1


def test_unpaired_mode_has_no_paired_loss(tmp_path):
    A, B = _pairs(4)
    tr = Trainer(A, B, tmp_path, TINY, paired=False, seed=0)
    assert tr.hp["paired_weight"] == 0.0
    losses = tr.step(0)
    assert set(losses) >= {"d", "g", "g_adv", "cycle", "recon"} and np.isfinite(list(losses.values())).all()


def _write_set(path, A, B, tag, recipe):
    np.savez_compressed(path, A=A.astype(np.float16), B=B.astype(np.float16),
                        source=np.array([f"{tag}:{i}" for i in range(len(A))]), recipe=json.dumps(recipe))


def test_several_training_sets_are_concatenated(tmp_path):
    from MultimodalRegistrationLab.train import load_training_sets
    A1, B1 = _pairs(3, seed=1)
    A2, B2 = _pairs(5, seed=2)
    _write_set(tmp_path / "a.npz", A1, B1, "brats", {"seed": 1})
    _write_set(tmp_path / "b.npz", A2, B2, "mni152-render", {"seed": 2})
    A, B, sources, recipe = load_training_sets([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert A.shape == (8, 32, 32) and B.shape == (8, 32, 32)
    np.testing.assert_allclose(A[3:], A2, atol=1e-3)     # float16 storage
    np.testing.assert_allclose(B[:3], B1, atol=1e-3)
    assert sources[:3] == ["brats:0", "brats:1", "brats:2"] and sources[3] == "mni152-render:0"
    assert recipe == [{"seed": 1}, {"seed": 2}]
    one = load_training_sets([tmp_path / "a.npz"])
    assert one[3] == {"seed": 1} and len(one[0]) == 3


def test_training_sets_must_exist_and_agree_in_size(tmp_path):
    from MultimodalRegistrationLib.errors import InputError
    from MultimodalRegistrationLab.train import load_training_sets
    A1, B1 = _pairs(2, size=32)
    A2, B2 = _pairs(2, size=48)
    _write_set(tmp_path / "a.npz", A1, B1, "x", {})
    _write_set(tmp_path / "b.npz", A2, B2, "x", {})
    with pytest.raises(InputError, match="different slice sizes"):
        load_training_sets([tmp_path / "a.npz", tmp_path / "b.npz"])
    with pytest.raises(InputError, match="not found: .*missing.npz"):
        load_training_sets([tmp_path / "a.npz", tmp_path / "missing.npz"])


def test_train_cli_on_two_sets_with_validation(tmp_path, capsys):
    from MultimodalRegistrationLab.train import main
    A1, B1 = _pairs(3, seed=1)
    A2, B2 = _pairs(3, seed=2)
    _write_set(tmp_path / "a.npz", A1, B1, "brats", {"seed": 1})
    _write_set(tmp_path / "b.npz", A2, B2, "mni152-render", {"seed": 2})
    out = tmp_path / "run"
    rc = main(["--data", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--val-data", str(tmp_path / "b.npz"),
               "--out", str(out), "--iterations", "2", "--ch", "8", "--n-res", "1", "--log-every", "1",
               "--sample-every", "0", "--device", "cpu"])
    assert rc == 0
    meta = json.loads(translate.sidecar_path(out / "nicegan_cet1_t2.safetensors").read_text())
    data = meta["training"]["data"]
    assert data["file"] == "a.npz + b.npz" and data["pairs"] == 6
    assert data["sources"] == {"brats": 3, "mni152-render": 3}
    assert "val_mse_A2B" in (out / "losses.jsonl").read_text()
    assert main(["--data", str(tmp_path / "nope.npz"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_init_from_unpaired_pool_and_normalisation_record(tmp_path):
    """Issue 12 levers: start from a checkpoint's encoders/decoders, draw some iterations from an
    unpaired ceT1 pool (no paired loss for them), and record the data's normalisation in the export."""
    A, B = _pairs(4)
    U = A[:, ::-1].copy()  # "real ceT1 without a T2"
    torch.manual_seed(5)
    src = Trainer(A, B, tmp_path / "src", TINY, seed=5)
    ck = src.export(tmp_path / "src.safetensors")
    norm = translate.tissue_peak_normalisation()
    tr = Trainer(A, B, tmp_path / "run", TINY, seed=0, normalisation=norm, A_unpaired=U, unpaired_prob=0.5)
    tr.init_from(ck)
    x = torch.from_numpy(A[:2] * 2 - 1)[:, None]
    with torch.no_grad():
        assert torch.allclose(tr.model.translate(x, "A", "B"), src.model.translate(x, "A", "B"))
    drawn = []
    for it in range(12):
        a, _ = tr.batch(it)
        from_pool = any(np.allclose(a[0, 0].numpy(), U[i] * 2 - 1) for i in range(len(U)))
        assert from_pool == (not tr._paired_now)
        drawn.append(from_pool)
    assert 0 < sum(drawn) < 12
    losses = tr.step(0)
    assert np.isfinite(list(losses.values())).all()
    meta = json.loads(translate.sidecar_path(tr.export()).read_text())
    assert meta["normalisation"]["method"] == "tissue-peak" and tr.hp["unpaired_prob"] == 0.5
    # another architecture is refused
    other = Trainer(A, B, tmp_path / "o", NiceGanConfig(ch=8, n_res=2, img_size=32))
    with pytest.raises(CheckpointError, match="architecture"):
        other.init_from(ck)
