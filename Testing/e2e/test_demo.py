"""The default path (`mmreg demo`: search-cr, bundled translator) on the bundled sample case reaches its
ground truth, and the demo exits non-zero when it does not."""
from __future__ import annotations

import json

from MultimodalRegistrationLib import cli, sample


def test_demo_default_path_is_accurate_and_flagged(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--progress", "none"]) == 0
    ev = sample.evaluate_output(out)
    t = json.loads((out / "transform.json").read_text())
    assert t["method"] == "search-cr" and t["success"] is True
    assert t["confidence_detail"]["rule"] == "forward/backward agreement"
    assert 0.5 <= t["confidence"] <= 1.0   # 0.5 is the calibrated threshold
    # measured on this code: mean 0.80 mm, max 1.52 mm, Dice 0.92 / 0.85 (limits about 1.5x those)
    assert ev["tre_mm"]["mean"] < 1.2 and ev["tre_mm"]["max"] < 2.3, ev["tre_mm"]
    assert min(ev["dice_coronal_labels_on_axial"].values()) > 0.8


def test_demo_fails_when_it_misses_the_ground_truth(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample, "DEMO_MAX_TRE_MM", 0.01)
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--progress", "none"]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_the_executable_exits_with_the_command_status_and_complete_outputs(tmp_path):
    """``python -m MultimodalRegistrationLib.cli`` ends register/demo with os._exit once everything is
    written (cli.FAST_EXIT_COMMANDS): the exit status is the command's, and every output is on disk."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from MultimodalRegistrationLib.contract import OUTPUT_FILES

    env = dict(os.environ, PYTHONPATH=str(ROOT / "MultimodalRegistration"))
    cmd = [sys.executable, "-m", "MultimodalRegistrationLib.cli"]
    bad = subprocess.run(cmd + ["register", "--coronal", str(tmp_path / "missing.nii.gz"), "--axial",
                                str(tmp_path / "missing2.nii.gz"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("mmreg register: error:"), bad.stderr
    out = tmp_path / "demo"
    ok = subprocess.run(cmd + ["demo", "--out", str(out), "--progress", "none"], capture_output=True, text=True,
                        env=env)
    assert ok.returncode == 0, ok.stderr
    assert "demo: TRE vs ground truth" in ok.stdout       # stdout flushed before the fast exit
    for name in OUTPUT_FILES.values():        # the sample has labels on both sides: every file exists
        assert (out / name).is_file(), name
    json.loads((out / OUTPUT_FILES["transform_json"]).read_text())
