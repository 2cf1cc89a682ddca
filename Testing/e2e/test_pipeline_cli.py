"""End to end: `mmreg register` on a simulated monomodal case writes the output contract and
recovers the known transform; bad inputs write nothing."""
import json

import numpy as np
import pytest

from MultimodalRegistrationLib import cli, geometry, metrics
from MultimodalRegistrationLib.contract import OUTPUT_FILES, TRANSFORM_REQUIRED_KEYS, check_transform
from MultimodalRegistrationLib.volume import load_volume
from MultimodalRegistrationLab import simulate


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory, fast_case):
    d = tmp_path_factory.mktemp("case")
    simulate.save_case(fast_case, d)
    return d


@pytest.fixture(scope="module")
def registered(case_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    # coronal_T2 stands in for a perfect ceT1->T2 conversion: a monomodal pair.
    rc = cli.main(["register", "--coronal", str(case_dir / "coronal_T2.nii.gz"),
                   "--axial", str(case_dir / "axial_T2.nii.gz"),
                   "--coronal-labels", str(case_dir / "coronal_labels.nii.gz"),
                   "--axial-labels", str(case_dir / "axial_labels.nii.gz"),
                   "--translator", "none", "--method", "ours", "--out", str(out), "--progress", "json"])
    assert rc == 0
    return out


def test_saved_case_round_trip(case_dir, fast_case):
    """``simulate.save_case`` writes volumes and a ground truth that read back as the case."""
    truth = json.loads((case_dir / "ground_truth.json").read_text())
    assert np.allclose(truth["moving_to_fixed_ras"], fast_case.moving_to_fixed)
    back = load_volume(case_dir / simulate.CASE_FILES["coronal_cet1"])
    assert np.allclose(back.affine, fast_case.coronal_cet1.affine, atol=1e-5)
    assert load_volume(case_dir / simulate.CASE_FILES["axial_t2"]).shape == fast_case.axial_t2.shape


def test_output_contract(registered, case_dir):
    for key in ("transform_json", "transform_tfm", "synth_t2", "cet1_on_axial", "fused", "coronal_labels_on_axial",
                "axial_labels_on_coronal", "label_colors", "report_json", "report_png",
                "qc_before_png", "qc_after_png", "report_html"):
        assert (registered / OUTPUT_FILES[key]).exists(), key
    t = json.loads((registered / "transform.json").read_text())
    check_transform(dict(t))
    assert set(t) >= set(TRANSFORM_REQUIRED_KEYS) | {"moving_to_fixed_ras", "method", "metric", "subset_index", "seconds", "success", "translator"}
    assert t["translator"] == "none" and t["method"] == "search-ncc"   # asked for by its old name "ours"
    M = np.asarray(t["moving_to_fixed_ras"])
    assert np.allclose(geometry.read_itk_tfm(registered / "transform.tfm"), M, atol=1e-6)
    import nibabel as nib
    img = nib.load(str(registered / "fused.nii.gz"))
    ax = load_volume(case_dir / "axial_T2.nii.gz")
    assert img.shape == ax.shape + (3,)
    assert np.allclose(img.affine, ax.affine, atol=1e-4)
    assert not list(registered.glob(".*.part*")), "temporary files left behind"


def test_recovers_known_transform_and_labels(registered, case_dir, fast_case):
    M = np.asarray(json.loads((registered / "transform.json").read_text())["moving_to_fixed_ras"])
    pts = metrics.overlap_points(fast_case.coronal_t2, fast_case.axial_t2, fast_case.moving_to_fixed)
    err = metrics.tre(M, fast_case.moving_to_fixed, pts)
    assert err["mean"] < 1.5, err
    # Labels carried onto the axial grid agree with the axial grid's own labels where both exist.
    got = load_volume(registered / "coronal_labels_on_axial.nii.gz", labels=True).array
    ref = fast_case.axial_labels.array
    cover = geometry.inside_mask(fast_case.coronal_t2.shape, fast_case.coronal_t2.affine, ref.shape,
                                 fast_case.axial_t2.affine, np.linalg.inv(fast_case.moving_to_fixed))
    assert metrics.mean_dice(got, ref, mask=cover) > 0.7


def test_missing_input_writes_nothing(tmp_path, case_dir, capsys):
    out = tmp_path / "out"
    rc = cli.main(["register", "--coronal", str(tmp_path / "nope.nii.gz"), "--axial",
                   str(case_dir / "axial_T2.nii.gz"), "--out", str(out), "--translator", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
    assert not out.exists()


def test_swapped_orientation_is_refused_unless_forced(tmp_path, case_dir, capsys):
    out = tmp_path / "out"
    rc = cli.main(["register", "--coronal", str(case_dir / "axial_T2.nii.gz"), "--axial",
                   str(case_dir / "coronal_T2.nii.gz"), "--out", str(out), "--translator", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "--force-orientation" in err and "axial slices" in err
    assert not out.exists()


def test_label_grid_mismatch_is_refused(tmp_path, case_dir, capsys):
    out = tmp_path / "out"
    rc = cli.main(["register", "--coronal", str(case_dir / "coronal_T2.nii.gz"), "--axial",
                   str(case_dir / "axial_T2.nii.gz"), "--coronal-labels", str(case_dir / "axial_labels.nii.gz"),
                   "--out", str(out), "--translator", "none"])
    assert rc == 2 and "grid" in capsys.readouterr().err
    assert not out.exists()


def test_one_progress_option_for_every_command(capsys):
    """register, demo, convert, batch and evaluate-gan declare --progress with the one helper of
    progress.py, and turn it into a callback with progress_from_args (batch with its own renderers)."""
    import argparse

    from MultimodalRegistrationLib import batch, progress

    parser = cli.build_parser()
    subs = parser._subparsers._group_actions[0].choices
    for name in ("register", "demo", "convert", "batch", "evaluate-gan"):
        action = next(a for a in subs[name]._actions if a.dest == "progress")
        assert tuple(action.choices) == progress.PROGRESS_MODES and action.default == "auto", name
    ns = argparse.Namespace
    assert progress.progress_from_args(ns(progress="none")) is None
    assert progress.progress_from_args(ns(progress="auto")) is None  # stderr is not a terminal under pytest
    emit = progress.progress_from_args(ns(progress="json"))
    emit("translate", 1, 2)
    assert json.loads(capsys.readouterr().err) == {"stage": "translate", "done": 1, "total": 2}
    emit = progress.progress_from_args(ns(progress="json"), json_renderer=batch.json_events, bar_renderer=batch.bar_events)
    emit({"stage": "batch", "done": 0, "total": 1})
    assert json.loads(capsys.readouterr().err) == {"stage": "batch", "done": 0, "total": 1}


def test_one_thread_setting():
    """batch (cases and workers), training and the lab's benchmarks set threads through threads.py only
    (the registration engine's own per-call settings are its business)."""
    from pathlib import Path

    import torch

    from MultimodalRegistrationLib import threads

    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == before and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    lib = Path(cli.__file__).parent
    files = [*lib.glob("batch/*.py"), lib / "cli.py", lib / "pipeline.py", *Path(simulate.__file__).parent.glob("*.py")]
    setters = [p.name for p in files if "set_num_threads(" in p.read_text() or "SetGlobalDefaultNumberOfThreads(" in p.read_text()]
    assert setters == [], setters


def _register_args(*extra):
    from MultimodalRegistrationLib import cli
    return cli.build_parser().parse_args(["register", "--coronal", "c.nii.gz", "--axial", "a.nii.gz",
                                          "--out", "o", *extra])


def test_init_option_sets_where_the_search_engines_start():
    from MultimodalRegistrationLib import cli
    from MultimodalRegistrationLib.errors import InputError

    assert cli.params_from_args(_register_args()).method_params == {}
    assert cli.params_from_args(_register_args("--init", "center")).method_params == {"init": "center"}
    assert cli.params_from_args(_register_args("--init", "header", "--method", "search-ncc")).method_params == \
        {"init": "search"}
    # paper and mi always start from the image centres: --init center is what they do, header is refused
    assert cli.params_from_args(_register_args("--init", "center", "--method", "mi")).method_params == {}
    with pytest.raises(InputError, match="image centres"):
        cli.params_from_args(_register_args("--init", "header", "--method", "paper"))
    with pytest.raises(InputError, match="not both"):
        cli.params_from_args(_register_args("--init", "center", "--param", "init=header"))
