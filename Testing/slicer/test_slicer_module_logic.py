"""The module's Logic driven outside Slicer: start, progress, finish, failure and cancel.

``slicer``/``vtk``/``qt`` are the strict stand-ins of Testing/slicer/fake_slicer.py (inputs are exported
through the stand-in storage node as real NIfTI files) and ``PythonSlicer`` is a small
script put first on PATH that behaves like the core's CLI (progress lines on stderr, outputs in
``--out``), so the real ``startRegistration`` -> child process -> ``_poll`` -> ``_finish`` path of
MultimodalRegistration.py runs, with the scene import replaced by a recorder.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from MultimodalRegistrationLib.contract import OutputError, read_transform_json

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fake PythonSlicer is a POSIX script")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_slicer

FAKE_PYTHONSLICER = textwrap.dedent('''\
    #!{python}
    import json, os, sys, time
    args = sys.argv[1:]
    out = args[args.index("--out") + 1]
    with open(os.path.join(os.path.dirname(out), "child_args.json"), "w") as f:
        json.dump({{"argv": args, "pythonpath": os.environ.get("PYTHONPATH", "")}}, f)
    mode = os.environ.get("FAKE_MODE", "ok")
    emit = lambda stage, done, total: (sys.stderr.write(json.dumps(
        {{"stage": stage, "done": done, "total": total}}) + "\\n"), sys.stderr.flush())
    emit("load", 1, 1)
    if mode == "fail":
        sys.stderr.write("error: the coronal stack is not coronal\\n")
        sys.exit(2)
    if mode == "hang":
        emit("register", 1, 10)
        time.sleep(60)
    for i in range(3):
        emit("register", i + 1, 3)
    with open(os.path.join(out, "transform.json"), "w") as f:
        json.dump({{"moving_to_fixed_ras": [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]],
                   "method": "ours", "metric": 0.25, "seconds": 1.5, "success": True,
                   "subset_index": 1, "subset_metrics": [0.5, 0.25]}}, f)
    for name in ("coronal_synthT2.nii.gz", "coronal_labels_on_axial.nii.gz"):
        open(os.path.join(out, name), "w").write("x")
    emit("write", 1, 1)
''')


@pytest.fixture()
def module(monkeypatch, tmp_path):
    from fake_slicer import install, load_module, put_fake_pythonslicer_on_path

    install(monkeypatch)
    put_fake_pythonslicer_on_path(monkeypatch, tmp_path, FAKE_PYTHONSLICER.format(python=sys.executable))
    return load_module()


def _volumes(module, labels=False):
    """A coronal and an axial volume (and a coronal label map) in the stand-in scene."""
    import slicer

    scene = slicer.mrmlScene
    cor = scene._volume("vtkMRMLScalarVolumeNode", "cor", np.ones((4, 5, 6), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
    ax = scene._volume("vtkMRMLScalarVolumeNode", "ax", np.ones((4, 5, 6), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
    if not labels:
        return cor, ax
    lab = scene._volume("vtkMRMLLabelMapVolumeNode", "cor labels", np.ones((4, 5, 6), np.int16),
                        np.diag([1.0, 1.0, 3.0, 1.0]))
    return cor, ax, lab


def _run(module, tmp_path, monkeypatch, mode, cancel_after_first_progress=False, import_error=None, **kwargs):
    from fake_slicer import fire_timers

    monkeypatch.setenv("FAKE_MODE", mode)
    logic = module.MultimodalRegistrationLogic()
    imported, progress, completed = [], [], []

    def fake_import(task):
        if import_error:
            raise import_error
        imported.append(task)
        task.result = read_transform_json(task.outputDir / "transform.json")
        return {}

    monkeypatch.setattr(logic, "importResults", fake_import)
    if kwargs.get("coronalLabels") == "labels":
        cor, ax, kwargs["coronalLabels"] = _volumes(module, labels=True)
    else:
        cor, ax = _volumes(module)
    task = logic.startRegistration(cor, ax, workDir=tmp_path / "work",
                                   progressCallback=lambda t: progress.append(t.tracker.percent),
                                   completedCallback=lambda t: completed.append(t.status), **kwargs)
    assert task.timer.active and task.timer.interval == logic.POLL_INTERVAL_MS
    deadline = time.monotonic() + 30
    while task.running and time.monotonic() < deadline:
        fire_timers()  # what Qt's event loop would do
        if cancel_after_first_progress and progress:
            logic.cancel(task)
        time.sleep(0.02)
    assert not task.running, "the task did not finish"
    assert not task.timer.active
    assert completed == [task.status], "completedCallback must be called exactly once"
    return logic, task, imported, progress


def test_success_runs_the_cli_with_the_module_dir_on_pythonpath(module, tmp_path, monkeypatch):
    logic, task, imported, progress = _run(module, tmp_path, monkeypatch, "ok", coronalLabels="labels",
                                           method=module.Method.PAPER, device=module.Device.CPU, seed=3)
    assert task.status == "completed", task.error
    assert imported == [task]
    assert progress == sorted(progress) and progress[-1] == 100
    child = json.loads((tmp_path / "work" / "child_args.json").read_text())
    argv = child["argv"]
    assert argv[:3] == ["-m", "MultimodalRegistrationLib.cli", "register"]
    assert argv[argv.index("--method") + 1] == "paper" and argv[argv.index("--seed") + 1] == "3"
    assert argv[argv.index("--coronal-labels") + 1].endswith("coronal_labels.nii.gz")
    assert child["pythonpath"].split(os.pathsep)[0] == str(ROOT / "MultimodalRegistration")
    assert task.result["metric"] == 0.25
    assert not task.inputDir.exists(), "exported inputs are removed unless kept"
    assert (task.outputDir / "transform.json").is_file(), "the output folder stays for the user"
    assert logic.lastTask is task


def test_keep_intermediate_files_keeps_inputs_and_passes_debug(module, tmp_path, monkeypatch):
    _logic, task, _imported, _p = _run(module, tmp_path, monkeypatch, "ok", keepIntermediateFiles=True)
    assert task.status == "completed"
    assert task.inputDir.exists()
    argv = json.loads((tmp_path / "work" / "child_args.json").read_text())["argv"]
    assert argv[2:4] == ["--debug", "register"]


def test_start_from_image_centres_passes_init_center(module, tmp_path, monkeypatch):
    _logic, task, _imported, _p = _run(module, tmp_path, monkeypatch, "ok", startFromImageCentres=True,
                                       keepIntermediateFiles=True)
    assert task.status == "completed"
    argv = json.loads((tmp_path / "work" / "child_args.json").read_text())["argv"]
    assert argv[argv.index("--init") + 1] == "center"


def test_failure_reports_the_core_error_line(module, tmp_path, monkeypatch):
    _logic, task, imported, _p = _run(module, tmp_path, monkeypatch, "fail")
    assert task.status == "failed"
    assert task.error == "error: the coronal stack is not coronal"
    assert imported == []
    assert not (tmp_path / "work").exists(), "a failed run leaves no temporary folder"


def test_bad_outputs_fail_cleanly(module, tmp_path, monkeypatch):
    _logic, task, _imported, _p = _run(module, tmp_path, monkeypatch, "ok",
                                       import_error=OutputError("transform.json lacks metric"))
    assert task.status == "failed" and "lacks metric" in task.error


def test_cancel_stops_the_child_and_imports_nothing(module, tmp_path, monkeypatch):
    _logic, task, imported, progress = _run(module, tmp_path, monkeypatch, "hang", cancel_after_first_progress=True)
    assert progress, "no progress before cancelling"
    assert task.status == "cancelled"
    assert imported == []
    assert not task.process.is_running()
    assert not (tmp_path / "work").exists()


def test_invalid_method_parameters_are_refused_before_anything_runs(module, tmp_path, monkeypatch):
    logic = module.MultimodalRegistrationLogic()
    cor, ax = _volumes(module)
    with pytest.raises(ValueError):
        logic.startRegistration(cor, ax, workDir=tmp_path / "work", methodParameters="lr0")
    assert not (tmp_path / "work" / "inputs").exists()
    with pytest.raises(ValueError):
        logic.startRegistration(cor, cor, workDir=tmp_path / "work")


def test_the_logic_drives_any_process_object_with_the_small_interface(module, tmp_path, monkeypatch):
    """The Logic uses its process only through start/poll/cancel/is_running, cancelled and error_message
    (MultimodalRegistrationSlicerLib/process.py): a fake given through processFactory, with no child
    process at all, runs a task to completion, progress included."""
    from fake_slicer import fire_timers
    from MultimodalRegistrationSlicerLib.process import ProcessOutput, ProgressEvent

    class FakeProcess:
        made = []

        def __init__(self, cmd, env=None, cwd=None):
            self.cmd, self.cwd, self.cancelled, self.error_message = cmd, cwd, False, ""
            self.polls = [ProcessOutput(progress=[ProgressEvent("load", 1, 1)], log=["stderr: hello"]),
                          ProcessOutput(progress=[ProgressEvent("write", 1, 1)], finished=True, returncode=0)]
            FakeProcess.made.append(self)

        def start(self):
            out = Path(self.cmd[self.cmd.index("--out") + 1])
            (out / "transform.json").write_text(json.dumps(
                {"moving_to_fixed_ras": np.eye(4).tolist(), "method": "mi", "metric": -0.5, "seconds": 1.0,
                 "success": True}))
            return self

        def poll(self):
            return self.polls.pop(0) if self.polls else ProcessOutput()

        def is_running(self):
            return bool(self.polls)

        def cancel(self):
            self.cancelled = True

    logic = module.MultimodalRegistrationLogic()
    logic.processFactory = FakeProcess
    monkeypatch.setattr(logic, "importResults",
                        lambda task: setattr(task, "result", read_transform_json(task.outputDir / "transform.json")))
    cor, ax = _volumes(module)
    progress = []
    task = logic.startRegistration(cor, ax, workDir=tmp_path / "work", method=module.Method.MI,
                                   progressCallback=lambda t: progress.append(t.tracker.percent))
    for _ in range(3):
        fire_timers()
    assert [p.cmd[p.cmd.index("--method") + 1] for p in FakeProcess.made] == ["mi"]
    assert task.status == "completed" and task.result["metric"] == -0.5
    assert progress == [5, 100] and "stderr: hello" in task.log
    assert not task.timer.active
