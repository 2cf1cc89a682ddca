"""Unit tests of the Slicer-free helpers of the module (MultimodalRegistrationSlicerLib: command line,
child process and progress, result checks, requirements) and of the output contract."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from MultimodalRegistrationLib import contract
from MultimodalRegistrationSlicerLib import command, labelmaps, process, requirements, results


# ---------------------------------------------------------------------------- command line
def test_command_has_contract_flags_in_order():
    cmd = command.build_register_command("/opt/PythonSlicer", "c.nii.gz", "a.nii.gz", "/tmp/out")
    assert cmd[:4] == ["/opt/PythonSlicer", "-m", "MultimodalRegistrationLib.cli", "register"]
    pairs = dict(zip(cmd[4::2], cmd[5::2]))
    assert pairs["--coronal"] == "c.nii.gz"
    assert pairs["--axial"] == "a.nii.gz"
    assert pairs["--out"] == "/tmp/out"
    assert pairs["--method"] == "search-cr"
    assert pairs["--translator"] == "default"
    assert pairs["--device"] == "auto"
    assert pairs["--progress"] == "json"
    assert "--coronal-labels" not in cmd and "--axial-labels" not in cmd
    assert "--debug" not in cmd and "--seed" not in cmd


def test_command_optional_parts():
    cmd = command.build_register_command(
        "py", "c", "a", "o", coronal_labels="cl.nii.gz", axial_labels="al.nii.gz",
        method=command.Method.MI, translator="none", device=command.Device.CPU, seed=7, debug=True,
        label_mode="nearest", method_params="lr0=4, iterations = 30")
    assert cmd[cmd.index("--coronal-labels") + 1] == "cl.nii.gz"
    assert cmd[cmd.index("--axial-labels") + 1] == "al.nii.gz"
    assert cmd[cmd.index("--method") + 1] == "mi"
    assert cmd[cmd.index("--translator") + 1] == "none"
    assert cmd[cmd.index("--device") + 1] == "cpu"
    assert cmd[cmd.index("--seed") + 1] == "7"
    assert cmd[cmd.index("--label-mode") + 1] == "nearest"
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--param"] == ["lr0=4", "iterations=30"]
    # --debug is an option of mmreg itself: it must come before the subcommand
    assert cmd[3:5] == ["--debug", "register"]


def test_command_init_option():
    assert "--init" not in command.build_register_command("py", "c", "a", "o")
    cmd = command.build_register_command("py", "c", "a", "o", init="center")
    assert cmd[cmd.index("--init") + 1] == "center"
    with pytest.raises(ValueError, match="init"):
        command.build_register_command("py", "c", "a", "o", init="centre")


@pytest.mark.parametrize("text,expected", [
    (None, []), ("", []), ("a=1", ["a=1"]), ("a=1 b=x,c=2.5;d=[1,2]", None),
    (["k=v", "m = 3"], ["k=v", "m=3"]),
])
def test_parse_method_params(text, expected):
    if expected is None:
        with pytest.raises(ValueError):  # "[1,2]" is split at the comma
            command.parse_method_params(text)
    else:
        assert command.parse_method_params(text) == expected


@pytest.mark.parametrize("bad", ["lr0", "=3", "lr0=", "a=1 b"])
def test_parse_method_params_rejects(bad):
    with pytest.raises(ValueError):
        command.parse_method_params(bad)


def test_command_translator_file():
    cmd = command.build_register_command("py", "c", "a", "o", translator=command.Translator.FILE,
                                    translator_file="/models/my.safetensors")
    assert cmd[cmd.index("--translator") + 1] == "/models/my.safetensors"
    with pytest.raises(ValueError, match="checkpoint"):
        command.build_register_command("py", "c", "a", "o", translator=command.Translator.FILE)


@pytest.mark.parametrize("kw", [dict(method="elastix"), dict(device="tpu"), dict(translator="x")])
def test_command_rejects_unknown_choices(kw):
    with pytest.raises(ValueError):
        command.build_register_command("py", "c", "a", "o", **kw)


def test_command_requires_inputs():
    with pytest.raises(ValueError):
        command.build_register_command("py", "", "a", "o")
    with pytest.raises(ValueError):
        command.build_register_command("", "c", "a", "o")


def test_child_environment_puts_module_dir_first():
    env = command.child_environment("/mod", {"PYTHONPATH": os.pathsep.join(["/x", "/mod", "/y"]), "A": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == ["/mod", "/x", "/y"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["A"] == "1"
    assert command.child_environment("/mod", {})["PYTHONPATH"] == "/mod"


def test_enum_labels_are_distinct_and_values_match_cli():
    assert [m.value for m in command.Method] == ["search-cr", "search-ncc", "paper", "mi"]
    assert [d.value for d in command.Device] == ["auto", "cpu", "cuda"]
    for enum_cls in (command.Method, command.Translator, command.Device):
        labels = [m.label() for m in enum_cls]
        assert len(set(labels)) == len(labels)


# ---------------------------------------------------------------------------- progress
def test_parse_progress_line():
    ev = process.parse_progress_line('{"stage": "translate", "done": 7, "total": 18}\n')
    assert ev == process.ProgressEvent("translate", 7, 18)
    for bad in ["", "Traceback (most recent call last):", "{not json}", "[1, 2]",
                '{"stage": "x"}', '{"done": 1, "total": 2}', '{"stage": "x", "done": "a", "total": 2}',
                '{"stage": "", "done": 1, "total": 2}', '{"stage": "x", "done": true, "total": 2}',
                'translate [####....] 7/18']:
        assert process.parse_progress_line(bad) is None, bad


def test_progress_tracker_is_monotonic_and_reaches_one():
    t = process.ProgressTracker()
    seen = []
    for stage, _ in process.STAGE_WEIGHTS:
        for done in range(0, 5):
            seen.append(t.update(process.ProgressEvent(stage, done, 4)))
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(1.0)
    assert t.percent == 100
    # late or unknown events do not move the bar backwards, but update the text
    t.update(process.ProgressEvent("load", 0, 4))
    assert t.fraction == pytest.approx(1.0)
    t.update(process.ProgressEvent("mystery", 1, 3))
    assert "Mystery" in t.status and "1/3" in t.status


def test_progress_tracker_midway():
    t = process.ProgressTracker()
    t.update(process.ProgressEvent("translate", 9, 18))
    start = dict(process.STAGE_WEIGHTS)["load"]
    assert t.fraction == pytest.approx(start + dict(process.STAGE_WEIGHTS)["translate"] / 2)
    assert t.status.startswith("Converting") and "9/18" in t.status


# ---------------------------------------------------------------------------- child process
FAKE_CLI = textwrap.dedent(r'''
    import json, os, subprocess, sys, time
    mode = sys.argv[1]
    out = sys.argv[2]
    if mode == "ok":
        print("hello from stdout", flush=True)
        for i in range(4):
            sys.stderr.write(json.dumps({"stage": "translate", "done": i + 1, "total": 4}) + "\n")
            sys.stderr.flush()
        sys.stderr.write("a warning that is not progress\n")
        with open(os.path.join(out, "transform.json"), "w") as f:
            json.dump({"moving_to_fixed_ras": [[1,0,0,2],[0,1,0,0],[0,0,1,0],[0,0,0,1]],
                       "method": "ours", "metric": 0.5, "seconds": 1.0, "success": True}, f)
        sys.exit(0)
    if mode == "fail":
        sys.stderr.write(json.dumps({"stage": "load", "done": 0, "total": 1}) + "\n")
        sys.stderr.write("error: the axial volume is 2D\n")
        sys.exit(3)
    if mode == "hang":
        # like the PythonSlicer launcher: a child that does the work, the parent waits for it
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.path.join(out, "grandchild.pid"), "w") as f:
            f.write(str(child.pid))
        sys.stderr.write(json.dumps({"stage": "register", "done": 1, "total": 9}) + "\n")
        sys.stderr.flush()
        child.wait()
''')


@pytest.fixture()
def fake_cli(tmp_path):
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)
    return script


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state where we can
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    return True


def test_core_process_success(fake_cli, tmp_path):
    proc = process.CoreProcess([sys.executable, str(fake_cli), "ok", str(tmp_path)]).start()
    events, logs = [], []

    def collect(out):
        events.extend(out.progress)
        logs.extend(out.log)

    assert proc.wait(timeout=30, on_output=collect) == 0
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert all(e.stage == "translate" for e in events)
    assert "stdout: hello from stdout" in logs
    assert any("not progress" in line for line in logs)
    assert proc.poll().finished is False  # reported once only
    result = contract.read_transform_json(tmp_path / "transform.json")
    assert result["moving_to_fixed_ras"][0][3] == 2.0


def test_core_process_failure_message(fake_cli, tmp_path):
    proc = process.CoreProcess([sys.executable, str(fake_cli), "fail", str(tmp_path)]).start()
    assert proc.wait(timeout=30) == 3
    assert proc.error_message == "error: the axial volume is 2D"


@pytest.mark.skipif(os.name == "nt", reason="process-group check written for POSIX")
def test_core_process_cancel_kills_the_whole_tree(fake_cli, tmp_path):
    proc = process.CoreProcess([sys.executable, str(fake_cli), "hang", str(tmp_path)]).start()
    deadline = time.monotonic() + 30
    got = []
    while not got and time.monotonic() < deadline:
        got = proc.poll().progress
        time.sleep(0.05)
    assert got and got[0].stage == "register"
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert _alive(grandchild)
    t0 = time.monotonic()
    proc.cancel(grace=2.0)
    assert time.monotonic() - t0 < 10
    assert not proc.is_running()
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert proc.wait(timeout=10) != 0
    assert proc.error_message.startswith("Cancelled")


def test_core_process_cannot_start_twice(fake_cli, tmp_path):
    proc = process.CoreProcess([sys.executable, str(fake_cli), "ok", str(tmp_path)]).start()
    with pytest.raises(RuntimeError):
        proc.start()
    proc.wait(timeout=30)


# ---------------------------------------------------------------------------- outputs
def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


GOOD = {"moving_to_fixed_ras": np.eye(4).tolist(), "method": "ours", "metric": 0.1,
        "seconds": 3.0, "success": True, "subset_index": 4, "subset_metrics": [0.3, 0.2, None, 0.1]}


def test_read_transform_json_accepts_contract(tmp_path):
    data = contract.read_transform_json(_write(tmp_path / "t.json", GOOD))
    assert data["moving_to_fixed_ras"] == np.eye(4).tolist()
    assert results.subset_curve(data) == ([0, 1, 3], [0.3, 0.2, 0.1])
    line = results.format_metrics(data)
    assert line.startswith("final NCC 0.1 | metric within the success threshold |"), line
    assert "3.0 s" in line and "subset 4" in line and "converged" not in line
    # every method the core reports has a metric name (no bare "metric")
    for method, name in (("ours", "NCC"), ("ours+mi-polish", "negative Mattes MI"), ("paper", "MSE"),
                         ("mi", "negative Mattes MI")):
        assert results.format_metrics(dict(GOOD, method=method)).startswith(f"final {name} 0.1 |"), method
    assert results.format_metrics(dict(GOOD, method="elastix")).startswith("final metric 0.1 |")
    assert results.format_metrics(dict(GOOD, metric_name="Dice")).startswith("final Dice 0.1 |")
    flagged_line = results.format_metrics(dict(GOOD, success=False))
    assert "outside the success threshold" in flagged_line and "converged" not in flagged_line
    assert results.completion_status(data, 12.4) == "Done in 12 s."
    flagged = results.completion_status(dict(GOOD, success=False, translator_note="no checkpoint"), 3)
    assert "unsuccessful" in flagged and flagged.endswith("no checkpoint")


def test_format_metrics_says_why_a_search_cr_result_is_flagged():
    detail = {"rule": "forward/backward agreement", "consistency_mm": 1.03, "threshold_mm": 2.0,
              "second_metric_confirmed": True}
    run = dict(GOOD, method="search-cr", confidence_detail=detail)
    assert "forward/backward agree to 1.0 mm (passes)" in results.format_metrics(run)
    rejected = dict(run, success=False, confidence_detail=dict(detail, second_metric_confirmed=False))
    assert "agree to 1.0 mm (flagged: the second metric prefers another estimate)" in results.format_metrics(rejected)
    apart = dict(run, success=False, confidence_detail=dict(detail, consistency_mm=9.0))
    assert "agree to 9.0 mm (flagged) |" in results.format_metrics(apart)
    moved = dict(run, success=False, confidence_detail=dict(detail, nmi_polish={"applied": True, "moved_mm": 3.2}))
    assert "agree to 1.0 mm (flagged: the NMI polish moved the result by 3.2 mm)" in results.format_metrics(moved)
    small = dict(run, confidence_detail=dict(detail, nmi_polish={"applied": True, "moved_mm": 0.4}))
    assert "(passes)" in results.format_metrics(small)
    rejoined = dict(run, confidence_detail=dict(detail, consistency_mm=2.6, nmi_polish={
        "applied": True, "moved_mm": 0.9, "directions_after_polish_mm": 0.31}))
    assert "agree to 2.6 mm (passes: 0.3 mm after polishing each on NMI)" in results.format_metrics(rejoined)


@pytest.mark.parametrize("bad", [
    {k: v for k, v in GOOD.items() if k != "metric"},
    dict(GOOD, moving_to_fixed_ras=np.eye(3).tolist()),
    dict(GOOD, moving_to_fixed_ras=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]),
    dict(GOOD, moving_to_fixed_ras=[[float("nan")] * 4] * 4),
    dict(GOOD, moving_to_fixed_ras="eye"),
])
def test_read_transform_json_rejects(tmp_path, bad):
    with pytest.raises(contract.OutputError):
        contract.read_transform_json(_write(tmp_path / "t.json", bad))


def test_read_transform_json_missing_and_garbage(tmp_path):
    with pytest.raises(contract.OutputError, match="missing"):
        contract.read_transform_json(tmp_path / "nope.json")
    (tmp_path / "g.json").write_text("{")
    with pytest.raises(contract.OutputError):
        contract.read_transform_json(tmp_path / "g.json")


def test_missing_outputs(tmp_path):
    assert results.missing_outputs(tmp_path, False, False) == ["transform.json", "coronal_synthT2.nii.gz"]
    for n in ("transform.json", "coronal_synthT2.nii.gz", "coronal_labels_on_axial.nii.gz"):
        (tmp_path / n).write_text("x")
    assert results.missing_outputs(tmp_path, True, False) == []
    assert results.missing_outputs(tmp_path, True, True) == ["axial_labels_on_coronal.nii.gz"]


# ---------------------------------------------------------------------------- requirements
def test_requirements_parsing_and_missing(tmp_path):
    f = tmp_path / "req.txt"
    f.write_text("# comment\nnibabel==5.3.2  # pinned\n\n--index-url https://x\nsafetensors>=0.4\n"
                 "pywin32==306; sys_platform == 'win32' and sys_platform == 'linux'\n")
    reqs = requirements.read_requirements(f)
    assert reqs[:2] == ["nibabel==5.3.2", "safetensors>=0.4"]
    versions = {"nibabel": "5.3.2", "safetensors": "0.3.0"}
    assert requirements.missing_requirements(reqs, versions.get) == ["safetensors>=0.4"]
    assert requirements.missing_requirements(reqs, {"safetensors": "0.5"}.get) == ["nibabel==5.3.2"]


# ---------------------------------------------------------------------------- metrics
def test_tre_translation_and_rotation():
    pts = results.box_corners_ras(np.diag([2.0, 2.0, 5.0, 1.0]), (10, 20, 4))
    assert len(pts) == 9
    assert [0.0, 0.0, 0.0] in pts and [18.0, 38.0, 15.0] in pts
    shifted = np.eye(4)
    shifted[:3, 3] = [1.0, 2.0, 2.0]
    tre = results.tre_mm(shifted, np.eye(4), pts)
    assert tre["mean"] == pytest.approx(3.0) and tre["max"] == pytest.approx(3.0)
    rot = np.eye(4)
    rot[:2, :2] = [[0, -1], [1, 0]]  # 90 degrees about S: error grows with distance from the axis
    tre = results.tre_mm(rot, np.eye(4), [[10, 0, 0], [0, 0, 5]])
    assert tre["per_point"] == pytest.approx([np.sqrt(200), 0.0])


def test_dice_per_label():
    a = np.zeros((4, 4, 2), int)
    b = np.zeros((4, 4, 2), int)
    a[:2] = 1
    b[1:3] = 1
    a[3, 3, 1] = 2
    b[0, 0, 0] = 5
    d = results.dice_per_label(a, b)
    assert d[1] == pytest.approx(2 * 8 / 32)
    assert d[2] == 0.0 and d[5] == 0.0
    assert results.dice_per_label(a, a) == {1: 1.0, 2: 1.0}
    assert results.dice_per_label(a, b, labels=[7]) == {}
    with pytest.raises(ValueError):
        results.dice_per_label(a, b[:2])


# ---------------------------------------------------------------------------- the real core CLI
LIB = Path(__file__).resolve().parents[2] / "MultimodalRegistration"
SAMPLE = LIB / "Resources" / "SampleData"


def test_real_core_cli_reports_progress_the_module_understands_and_cancels(tmp_path):
    """The module's command, run with this Python as 'PythonSlicer': the first JSON progress line
    parses, and Cancel stops the run (the sample case takes minutes, so it is still running)."""
    files = {k: SAMPLE / v for k, v in contract.SAMPLE_VOLUME_FILES.items()}
    assert [p.name for p in files.values() if not p.is_file()] == [], "the bundled sample case is incomplete"
    cmd = command.build_register_command(sys.executable, files["coronal"], files["axial"], tmp_path / "out",
                                    coronal_labels=files["coronal_labels"], device="cpu")
    proc = process.CoreProcess(cmd, env=command.child_environment(LIB), cwd=tmp_path).start()
    events, deadline = [], time.monotonic() + 120
    while not events and time.monotonic() < deadline:
        if not proc.is_running():  # ended early: drain what the reader threads still hold
            proc.wait(timeout=10, on_output=lambda out: events.extend(out.progress))
            break
        events += proc.poll().progress
        time.sleep(0.05)
    assert events, f"no progress line; stderr: {proc.stderr_lines[-5:]}"
    assert events[0].stage in dict(process.STAGE_WEIGHTS)
    proc.cancel()
    assert not proc.is_running()
    assert proc.wait(timeout=10) != 0
    assert not (tmp_path / "out" / "transform.json").exists()
