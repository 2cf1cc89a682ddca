"""mmreg batch: manifests, folder scheme, safe case ids, resume, failures, parallel workers, progress.

Most tests inject a fake ``run_case`` (module-level, so spawned workers can import it) that writes a
small output contract; the end-to-end tests at the bottom run the real pipeline on simulated cases.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from MultimodalRegistrationLib import batch
from MultimodalRegistrationLib.batch import Case, ManifestError
from MultimodalRegistrationLib.errors import InputError
from MultimodalRegistrationLib.volume import Volume, load_volume, save_volume, atomic_write

COR_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 0, 3.0, -20], [0, 1.0, 0, -60], [0, 0, 0, 1]])
AX_AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


# ----------------------------------------------------------------------------- fakes (picklable)

def fake_run_case(coronal, axial, out_dir, *, coronal_labels=None, axial_labels=None, params=None,
                  progress=None):
    """Behaves like pipeline.run_case on tiny volumes; the coronal file name steers failures."""
    name = Path(coronal).name
    log = os.environ.get("MMREG_FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(Path(coronal).parent.name + ":" + name + "\n")
    cor = load_volume(coronal)
    ax = load_volume(axial)
    if progress:
        progress("register", 0, 2)
    if "fail" in name:
        raise InputError(f"coronal '{coronal}' is unusable\n(second line)")
    if "bug" in name:
        raise ZeroDivisionError("division by zero")
    if "crash" in name:
        os._exit(3)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        progress("register", 2, 2)
    save_volume(Volume(ax.array * 0 + cor.array.mean(), ax.affine), out / "coronal_ceT1_on_axial.nii.gz")
    if "interrupt" in name:
        raise KeyboardInterrupt
    if coronal_labels:
        lab = load_volume(coronal_labels, labels=True)
        save_volume(Volume(np.zeros(ax.shape, np.uint16) + int(lab.array.max()), ax.affine),
                    out / "coronal_labels_on_axial.nii.gz", dtype=np.uint16)
    seed = 0 if params is None else batch.params_dict(params).get("seed", 0)
    t = {"moving_to_fixed_ras": np.eye(4).tolist(), "method": "fake", "metric": float(cor.array.mean() + seed),
         "subset_index": None, "seconds": 0.0, "success": "flag" not in name}
    atomic_write(out / "transform.json", lambda tmp: Path(tmp).write_text(json.dumps(t)), suffix=".json")
    return t


def slow_run_case(coronal, axial, out_dir, **kw):
    """Writes one output, then sleeps (a long case to interrupt)."""
    import time
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "partial.txt").write_text("half")
    if "slow" in Path(coronal).name:
        time.sleep(60)
    return fake_run_case(coronal, axial, out_dir, **kw)


# ----------------------------------------------------------------------------- helpers

def _write(path: Path, arr, aff) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), aff), str(path))
    return path


def _make_case(folder: Path, cid: str, *, cor_name="coronal_ceT1.nii.gz", labels=False, value=1.0) -> Case:
    rng = np.random.default_rng(abs(hash(cid)) % 2**32)
    cor = _write(folder / cid / cor_name, (rng.random((8, 8, 4)) + value).astype(np.float32), COR_AFFINE)
    ax = _write(folder / cid / "axial_T2.nii.gz", rng.random((8, 8, 5)).astype(np.float32), AX_AFFINE)
    cl = _write(folder / cid / "coronal_labels.nii.gz", np.ones((8, 8, 4), np.uint16), COR_AFFINE) if labels else None
    return Case(cid, cor, ax, coronal_labels=cl)


def _digest(paths) -> dict:
    return {str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime_ns) for p in paths}


def _rows(out: Path) -> dict:
    return {r["case_id"]: r for r in batch.read_summary(out / batch.SUMMARY)}


@pytest.fixture
def calls(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("MMREG_FAKE_LOG", str(log))

    def read():
        return log.read_text().splitlines() if log.exists() else []
    return read


PARAMS = {"method": "fake", "seed": 0}


# ----------------------------------------------------------------------------- manifest and ids

def test_manifest_relative_paths_comments_aliases_and_optional_labels(tmp_path):
    a = _make_case(tmp_path / "data", "p01", labels=True)
    b = _make_case(tmp_path / "data", "p02")
    m = tmp_path / "m.csv"
    m.write_text("# annotator batch\n"
                 "ID,Coronal,Axial,coronal_labels,axial_labels\n"
                 f"p01,data/p01/coronal_ceT1.nii.gz,{a.axial},data/p01/coronal_labels.nii.gz,\n"
                 "\n"
                 f"p02 , data/p02/coronal_ceT1.nii.gz , data/p02/axial_T2.nii.gz,,\n")
    cases = batch.load_cases(m)
    assert [c.case_id for c in cases] == ["p01", "p02"]
    assert cases[0].coronal == a.coronal and cases[0].axial == a.axial
    assert cases[0].coronal_labels == a.coronal_labels and cases[0].axial_labels is None
    assert cases[1].coronal == b.coronal and cases[1].coronal_labels is None


@pytest.mark.parametrize("bad_id", ["../evil", "..", ".", "/abs", "/tmp/x", "a/b", "a\\b", "a b", ".hidden",
                                    "x;rm", "é", "", "con", "NUL.txt", "summary.csv", "-rf", "x" * 65,
                                    "C:evil"])
def test_unsafe_case_ids_are_refused(tmp_path, bad_id):
    m = tmp_path / "m.csv"
    with open(m, "w", newline="") as f:
        csv.writer(f).writerows([["case_id", "coronal", "axial"], [bad_id, "c.nii.gz", "a.nii.gz"]])
    with pytest.raises(ManifestError, match="case id|reserved"):
        batch.read_manifest(m)


@pytest.mark.parametrize("text,msg", [
    ("case_id,coronal\np1,c.nii.gz\n", "lacks a 'axial'"),
    ("case_id,coronal,axial,extra\np1,c,a,x\n", "unknown column"),
    ("case_id,coronal,axial\np1,c.nii.gz\n", "has 2 cells"),
    ("case_id,coronal,axial\np1,,a.nii.gz\n", "no coronal path"),
    ("case_id,coronal,axial\n", "lists no cases"),
    ("# nothing\n", "no header"),
    ("case_id,coronal,axial\np1,c,a\nP1,c,a\n", "appears twice"),
])
def test_manifest_errors(tmp_path, text, msg):
    m = tmp_path / "m.csv"
    m.write_text(text)
    with pytest.raises(ManifestError, match=msg):
        cases = batch.load_cases(m)
        batch.check_cases(cases, tmp_path / "out")


def test_missing_or_binary_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        batch.load_cases(tmp_path / "nope.csv")
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ManifestError):
        batch.load_cases(p)


def test_folder_scheme_subfolders_and_flat(tmp_path):
    d = tmp_path / "in"
    _make_case(d, "s1", labels=True)
    _make_case(d, "s2", cor_name="coronal.nii.gz")
    (d / "notes").mkdir()  # a folder without images is ignored
    _write(d / "f3_coronal_ceT1.nii.gz", np.random.rand(8, 8, 4).astype(np.float32), COR_AFFINE)
    _write(d / "f3_axial_T2.nii", np.random.rand(8, 8, 5).astype(np.float32), AX_AFFINE)
    cases = {c.case_id: c for c in batch.scan_folder(d)}
    assert sorted(cases) == ["f3", "s1", "s2"]
    assert cases["s1"].coronal_labels is not None and cases["s2"].coronal_labels is None
    assert cases["s2"].coronal.name == "coronal.nii.gz" and cases["f3"].axial.name == "f3_axial_T2.nii"
    # a case folder with a coronal but no axial is an error, not silently skipped
    _write(d / "s4" / "coronal_ceT1.nii.gz", np.random.rand(8, 8, 4).astype(np.float32), COR_AFFINE)
    with pytest.raises(ManifestError, match="no axial"):
        batch.scan_folder(d)


def test_empty_folder_and_odd_folder_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no cases found"):
        batch.scan_folder(tmp_path / "empty")
    _make_case(tmp_path / "odd", "bad name")
    with pytest.raises(ManifestError, match="not allowed"):
        batch.scan_folder(tmp_path / "odd")


def test_inputs_inside_out_are_refused(tmp_path):
    c = _make_case(tmp_path / "out" / "in", "p1")
    with pytest.raises(ManifestError, match="inside the output folder"):
        batch.run_batch([c], tmp_path / "out", PARAMS, run_case=fake_run_case)
    assert not (tmp_path / "out" / batch.SUMMARY).exists()


# ----------------------------------------------------------------------------- running, failures, resume

def test_batch_writes_outputs_summary_and_markers(tmp_path, calls):
    cases = [_make_case(tmp_path / "in", "p1", labels=True), _make_case(tmp_path / "in", "p2")]
    before = _digest([p for c in cases for p in c.inputs().values()])
    out = tmp_path / "out"
    res = batch.run_batch(cases, out, PARAMS, run_case=fake_run_case)
    assert [r.status for r in res] == ["done", "done"]
    assert (out / "p1" / "coronal_labels_on_axial.nii.gz").exists()
    assert not (out / "p2" / "coronal_labels_on_axial.nii.gz").exists()
    for cid in ("p1", "p2"):
        m = json.loads((out / cid / batch.MARKER).read_text())
        assert set(m["outputs"]) >= {"transform.json", "coronal_ceT1_on_axial.nii.gz"}
        assert m["params"] == PARAMS and len(m["hash"]) == 64
        assert m["inputs"]["coronal"]["sha256"] == hashlib.sha256(Path(m["inputs"]["coronal"]["path"]).read_bytes()).hexdigest()
    rows = _rows(out)
    assert rows["p1"]["status"] == "done" and rows["p1"]["success"] == "true"
    assert float(rows["p1"]["seconds"]) >= 0 and rows["p1"]["error"] == ""
    assert rows["p1"]["out_dir"] == str(out / "p1")
    assert list(rows["p1"]) == list(batch.SUMMARY_COLUMNS)
    # nothing temporary left; inputs untouched (bytes and mtime)
    leftovers = [p for p in out.rglob("*") if ".part" in p.name or batch.STAGING in str(p)]
    assert leftovers == []
    assert _digest([p for c in cases for p in c.inputs().values()]) == before
    assert len(calls()) == 2


def test_one_failing_case_does_not_stop_the_batch(tmp_path, calls):
    cases = [_make_case(tmp_path / "in", "a"), _make_case(tmp_path / "in", "b", cor_name="fail_coronal.nii.gz"),
             _make_case(tmp_path / "in", "c", cor_name="bug_coronal.nii.gz"), _make_case(tmp_path / "in", "d")]
    cases.append(Case("e", tmp_path / "in" / "missing.nii.gz", cases[0].axial))
    out = tmp_path / "out"
    res = {r.case_id: r for r in batch.run_batch(cases, out, PARAMS, run_case=fake_run_case)}
    assert [res[k].status for k in "abcde"] == ["done", "failed", "failed", "done", "failed"]
    assert "is unusable (second line)" in res["b"].error and "\n" not in res["b"].error
    assert res["c"].error.startswith("internal error: ZeroDivisionError")
    assert "does not exist" in res["e"].error
    for k in "bce":
        assert not (out / k).exists(), "a failed case must leave no output folder"
        assert (out / batch.LOGS / f"{k}.log").exists()
    assert "Traceback" in (out / batch.LOGS / "c.log").read_text()
    rows = _rows(out)
    assert rows["b"]["status"] == "failed" and rows["b"]["success"] == ""
    code, msg = batch.summarize(list(res.values()), out)
    assert code == 1 and "3 failed" in msg


def test_flagged_unsuccessful_counts_as_done_exit_0(tmp_path):
    cases = [_make_case(tmp_path / "in", "a", cor_name="flag_coronal.nii.gz"), _make_case(tmp_path / "in", "b")]
    res = batch.run_batch(cases, tmp_path / "out", PARAMS, run_case=fake_run_case)
    assert [(r.status, r.success) for r in res] == [("done", False), ("done", True)]
    assert _rows(tmp_path / "out")["a"]["success"] == "false"
    code, msg = batch.summarize(res, tmp_path / "out")
    assert code == 0 and "1 flagged unsuccessful" in msg


def test_resume_skips_finished_and_reruns_changed(tmp_path, calls):
    d = tmp_path / "in"
    cases = [_make_case(d, f"p{i}") for i in range(4)]
    out = tmp_path / "out"
    batch.run_batch(cases, out, PARAMS, run_case=fake_run_case)
    assert len(calls()) == 4
    mtime = (out / "p0" / "transform.json").stat().st_mtime_ns

    res = batch.run_batch(cases, out, PARAMS, run_case=fake_run_case)
    assert [r.status for r in res] == ["skipped"] * 4 and len(calls()) == 4
    assert (out / "p0" / "transform.json").stat().st_mtime_ns == mtime
    assert _rows(out)["p0"]["status"] == "skipped" and _rows(out)["p0"]["metric"] != ""

    # one input byte changes -> that case only; a deleted output -> that case; a bad marker -> that case
    _write(cases[1].coronal, np.random.rand(8, 8, 4).astype(np.float32) + 5, COR_AFFINE)
    (out / "p2" / "coronal_ceT1_on_axial.nii.gz").unlink()
    (out / "p3" / batch.MARKER).write_text("{not json")
    (out / "p0" / "stale_extra_file.txt").write_text("x")
    res = batch.run_batch(cases, out, PARAMS, run_case=fake_run_case)
    assert [r.status for r in res] == ["skipped", "done", "done", "done"]
    assert len(calls()) == 7
    assert (out / "p2" / "coronal_ceT1_on_axial.nii.gz").exists()

    # an output edited in place (same size, other bytes) -> that case re-runs
    t = out / "p1" / "transform.json"
    raw = bytearray(t.read_bytes())
    raw[-2] = ord(" ") if raw[-2] != ord(" ") else ord("\n")
    t.write_bytes(bytes(raw))
    res = batch.run_batch(cases, out, PARAMS, run_case=fake_run_case)
    assert [r.status for r in res] == ["skipped", "done", "skipped", "skipped"]
    assert len(calls()) == 8

    # other parameters -> everything re-runs, and stale files of a re-run case are cleared
    (out / "p1" / "stale_extra_file.txt").write_text("x")
    res = batch.run_batch(cases, out, {**PARAMS, "seed": 1}, run_case=fake_run_case)
    assert [r.status for r in res] == ["done"] * 4 and len(calls()) == 12
    assert not (out / "p1" / "stale_extra_file.txt").exists()
    # --force re-runs even when finished
    batch.run_batch(cases[:1], out, {**PARAMS, "seed": 1}, run_case=fake_run_case, force=True)
    assert len(calls()) == 13


def test_moved_inputs_with_same_bytes_are_still_finished(tmp_path, calls):
    c = _make_case(tmp_path / "in", "p1")
    out = tmp_path / "out"
    batch.run_batch([c], out, PARAMS, run_case=fake_run_case)
    (tmp_path / "in").rename(tmp_path / "moved")
    c2 = Case("p1", tmp_path / "moved" / "p1" / c.coronal.name, tmp_path / "moved" / "p1" / c.axial.name)
    assert batch.run_batch([c2], out, PARAMS, run_case=fake_run_case)[0].status == "skipped"
    assert len(calls()) == 1


def test_half_written_case_is_never_mistaken_for_finished(tmp_path, calls):
    """Ctrl-C in the middle of a case: no marker, no OUT/<id>; the summary says pending; resume re-runs it."""
    d = tmp_path / "in"
    a = _make_case(d, "a")
    b = _make_case(d, "b", cor_name="interrupt_coronal.nii.gz")
    c = _make_case(d, "c")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch([a, b, c], out, PARAMS, run_case=fake_run_case)
    assert (out / "a" / batch.MARKER).exists()
    assert not (out / "b").exists() and not (out / "c").exists()
    assert not (out / batch.STAGING).exists()
    rows = _rows(out)
    assert [rows[k]["status"] for k in "abc"] == ["done", "pending", "pending"]
    assert not [p for p in out.rglob("*") if ".part" in p.name]
    assert '"id":"c","status":"pending"' in (out / batch.REPORT).read_text(), "the page is written after Ctrl-C too"

    # A crash could also leave a staging folder and an un-marked case folder behind.
    (out / batch.STAGING / "c" / "out").mkdir(parents=True)
    (out / batch.STAGING / "c" / "out" / "transform.json").write_text("{}")
    (out / "c").mkdir()
    (out / "c" / "transform.json").write_text("{}")  # outputs without marker = not finished
    os.rename(b.coronal, d / "b" / "coronal_ceT1.nii.gz")
    b2 = Case("b", d / "b" / "coronal_ceT1.nii.gz", b.axial)
    res = batch.run_batch([a, b2, c], out, PARAMS, run_case=fake_run_case)
    assert [r.status for r in res] == ["skipped", "done", "done"]
    assert json.loads((out / "c" / "transform.json").read_text())["method"] == "fake"
    assert not (out / batch.STAGING).exists()


def test_summary_is_rewritten_after_every_case(tmp_path, monkeypatch):
    cases = [_make_case(tmp_path / "in", f"p{i}") for i in range(3)]
    seen = []
    real = batch.write_summary

    def spy(out, cs, results, name=batch.SUMMARY):
        p = real(out, cs, results, name)
        seen.append([r["status"] for r in batch.read_summary(p)])
        return p
    monkeypatch.setattr(batch.runner, "write_summary", spy)
    batch.run_batch(cases, tmp_path / "out", PARAMS, run_case=fake_run_case)
    assert ["done", "pending", "pending"] in seen and ["done", "done", "pending"] in seen
    assert seen[-1] == ["done"] * 3


def test_progress_events(tmp_path):
    cases = [_make_case(tmp_path / "in", f"p{i}") for i in range(3)]
    events = []
    batch.run_batch(cases, tmp_path / "out", PARAMS, run_case=fake_run_case, progress=events.append)
    assert all(e["stage"] == "batch" and e["total"] == 3 for e in events)
    assert any(e.get("case_stage") == "register" and e.get("case_total") == 2 for e in events)
    assert events[-1]["done"] == 3 and events[-1]["case"] == "p2"
    assert [e["done"] for e in events] == sorted(e["done"] for e in events)
    assert "eta_s" in events[-1]
    # the JSON renderer writes one parseable line per event; the bar renders on a non-tty as lines
    buf = io.StringIO()
    emit = batch.json_events(buf)
    for e in events:
        emit(e)
    lines = buf.getvalue().splitlines()
    assert [json.loads(ln) for ln in lines] == events
    buf = io.StringIO()
    bar = batch.bar_events(buf)
    bar(events[-1])
    assert "3/3 cases" in buf.getvalue() and "p2" in buf.getvalue()


def test_concurrent_batch_on_same_out_is_refused(tmp_path):
    from MultimodalRegistrationLib.errors import MMRegError
    c = _make_case(tmp_path / "in", "p1")
    out = tmp_path / "out"
    out.mkdir()
    with batch.runner.OutLock(out):
        with pytest.raises(MMRegError, match="another 'mmreg batch'"):
            batch.run_batch([c], out, PARAMS, run_case=fake_run_case)


def test_plan_jobs_caps_by_cores_and_memory(tmp_path, monkeypatch):
    cases = [_make_case(tmp_path / "in", f"p{i}") for i in range(4)]
    monkeypatch.setattr(batch.resources, "available_cpus", lambda: 2)
    monkeypatch.setattr(batch.resources, "available_memory_bytes", lambda: 64 * 1024**3)
    jobs, threads, notes = batch.plan_jobs(8, cases)
    assert (jobs, threads) == (2, 1) and "capped" in notes[0]
    assert batch.plan_jobs(1, cases)[:2] == (1, 2)
    assert batch.plan_jobs(2, cases[:1])[0] == 1
    # header-based estimate: a 512^3 volume does not fit twice in 3 GiB
    big = _write(tmp_path / "big.nii", np.zeros((2, 2, 2), np.float32), AX_AFFINE)
    img = nib.load(str(big))
    hdr = img.header.copy()
    hdr.set_data_shape((512, 512, 512))
    big.write_bytes(hdr.binaryblock + b"\0" * 4)  # header only: the estimate must not read voxels
    huge = Case("huge", big, big)
    need = batch.estimate_case_bytes(huge)
    assert need > 12 * 4 * 512**3
    monkeypatch.setattr(batch.resources, "available_memory_bytes", lambda: int(need * 1.5))
    jobs, _, notes = batch.plan_jobs(2, [huge, *cases])
    assert jobs == 1 and "lowered" in notes[0]
    monkeypatch.setattr(batch.resources, "available_memory_bytes", lambda: int(need / 2))
    jobs, _, notes = batch.plan_jobs(2, [huge])
    assert jobs == 1


def test_available_memory_is_sane():
    m = batch.available_memory_bytes()
    assert m is None or m > 10 * 1024**2
    assert batch.available_cpus() >= 1


# ----------------------------------------------------------------------------- parallel workers

def test_jobs_2_matches_jobs_1_and_survives_a_dying_worker(tmp_path):
    d = tmp_path / "in"
    cases = [_make_case(d, f"p{i}") for i in range(4)]
    crash = _make_case(d, "zz", cor_name="crash_coronal.nii.gz")
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    r1 = batch.run_batch(cases, out1, PARAMS, run_case=fake_run_case, jobs=1)
    events = []
    r2 = batch.run_batch([cases[0], crash, *cases[1:]], out2, PARAMS, run_case=fake_run_case, jobs=2,
                         progress=events.append)
    st = {r.case_id: r for r in r2}
    assert st["zz"].status == "failed" and "worker process" in st["zz"].error
    assert all(st[c.case_id].status == "done" for c in cases)
    for a, b in zip(r1, [st[c.case_id] for c in cases]):
        assert a.metric == b.metric
        assert (out1 / a.case_id / "transform.json").read_bytes() == (out2 / b.case_id / "transform.json").read_bytes()
    assert any(e.get("case_stage") == "register" for e in events), "worker progress reaches the parent"
    assert not (out2 / batch.STAGING).exists()
    assert _rows(out2)["zz"]["status"] == "failed"


@pytest.mark.parametrize("jobs", [1, 2])
def test_case_timeout_stops_only_the_stuck_case(tmp_path, jobs):
    import time
    d = tmp_path / "in"
    cases = [_make_case(d, f"p{i}") for i in range(3)]
    stuck = _make_case(d, "stuck", cor_name="slow_coronal.nii.gz")   # slow_run_case sleeps 60 s on it
    out = tmp_path / "o"
    t0 = time.monotonic()
    res = batch.run_batch([cases[0], stuck, *cases[1:]], out, PARAMS, run_case=slow_run_case, jobs=jobs,
                          case_timeout=4.0)
    elapsed = time.monotonic() - t0
    st = {r.case_id: r for r in res}
    assert st["stuck"].status == "failed" and "timed out" in st["stuck"].error, st["stuck"]
    assert all(st[c.case_id].status == "done" for c in cases), st
    assert elapsed < 45, f"the stuck case was waited for ({elapsed:.0f} s)"
    assert not (out / "stuck").exists() and not (out / batch.STAGING).exists()
    assert _rows(out)["stuck"]["status"] == "failed"
    # the finished cases are not redone on resume; the timed-out one is tried again
    res2 = batch.run_batch([cases[0], stuck, *cases[1:]], out, PARAMS, run_case=slow_run_case, jobs=jobs,
                           case_timeout=4.0)
    assert {r.case_id: r.status for r in res2} == {"p0": "skipped", "p1": "skipped", "p2": "skipped",
                                                  "stuck": "failed"}


def test_case_timeout_must_be_positive(tmp_path):
    cases = [_make_case(tmp_path / "in", "p0")]
    with pytest.raises(InputError, match="timeout"):
        batch.run_batch(cases, tmp_path / "o", PARAMS, run_case=fake_run_case, case_timeout=0)


DRIVER = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)   # the test asks for every thread's stack on a hang
# Ctrl-C as in a terminal: a process started in the background of a non-interactive shell inherits
# SIGINT ignored, and Python then installs no KeyboardInterrupt handler (this test hung so in CI runs)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path[:0] = {paths!r}
import test_batch
from MultimodalRegistrationLib import batch
if __name__ == "__main__":  # spawned workers re-import this script
    cases = [batch.Case(cid, c, a) for cid, c, a in {cases!r}]
    try:
        batch.run_batch(cases, {out!r}, {{"p": 1}}, jobs=2, run_case=test_batch.slow_run_case)
    except KeyboardInterrupt:
        sys.exit(130)
"""


def test_ctrl_c_with_workers_stops_quickly_and_leaves_no_half_case(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    d = tmp_path / "in"
    cs = [_make_case(d, "a"), _make_case(d, "b", cor_name="slow_coronal.nii.gz"),
          _make_case(d, "c", cor_name="slow_coronal.nii.gz"), _make_case(d, "d")]
    out = tmp_path / "out"
    paths = [str(Path(__file__).parent), str(Path(__file__).parents[2] / "MultimodalRegistration")]
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(paths=paths, out=str(out),
                                    cases=[(c.case_id, str(c.coronal), str(c.axial)) for c in cs]))
    # its own process group: on a hang the test stops the driver and its workers together (the workers
    # hold the driver's output pipes open)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 60:
        staging = out / batch.STAGING
        if (staging / "b" / "out" / "partial.txt").exists() and (staging / "c" / "out" / "partial.txt").exists():
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the slow cases never started")
    proc.send_signal(signal.SIGINT)
    try:
        # communicate, not wait: the driver's output is read as it comes, so a full pipe cannot block it
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)          # every thread's stack, to stderr (faulthandler)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)       # the driver and its workers
        _, err = proc.communicate(timeout=20)
        pytest.fail("Ctrl-C did not stop the batch within 20 s; the driver's stderr, last part:\n"
                    + err.decode(errors="replace")[-6000:])
    rc = proc.returncode
    assert rc == 130, err.decode()[-2000:]
    rows = _rows(out)
    assert rows["a"]["status"] == "done"
    assert rows["b"]["status"] == "pending" and rows["c"]["status"] == "pending"
    assert not (out / "b").exists() and not (out / "c").exists()
    assert rows["d"]["status"] in ("pending", "done")
    assert not (out / batch.STAGING).exists()
    assert not [p for p in out.rglob("*") if ".part" in p.name]


# ----------------------------------------------------------------------------- CLI and the real pipeline

def _cli(argv):
    from MultimodalRegistrationLib import cli
    return cli.main(argv)


def test_cli_manifest_error_is_one_line_exit_2(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("case_id,coronal,axial\n../escape,c.nii.gz,a.nii.gz\n")
    out = tmp_path / "out"
    assert _cli(["batch", str(m), "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case id '../escape'" in err[0]
    assert not out.exists()
    assert _cli(["batch", str(tmp_path / "nothing.csv"), "--out", str(out), "--jobs", "0"]) == 2
    assert not out.exists()
    capsys.readouterr()
    assert _cli(["batch", "--out", str(out)]) == 2                     # no INPUT
    assert _cli(["batch", str(m), "--merge", str(tmp_path)]) == 2      # --merge takes no INPUT
    assert _cli(["batch", "--merge", str(tmp_path)]) == 2              # nothing to merge
    assert _cli(["batch", str(m), "--out", str(out), "--shard", "3/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "INPUT" in err[0] and "no summary-shard" in err[2] and "1 <= K <= N" in err[3], err
    assert not out.exists()


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory, brats_source):
    from MultimodalRegistrationLab import simulate
    d = tmp_path_factory.mktemp("sim")
    for seed in (1, 2):
        simulate.save_case(simulate.simulate_case(brats_source, seed=seed, params="fast"), d / f"case{seed}")
    # a third case whose axial stack is really the coronal one: must fail alone
    bad = d / "swapped"
    bad.mkdir()
    (bad / "coronal_ceT1.nii.gz").write_bytes((d / "case1" / "coronal_ceT1.nii.gz").read_bytes())
    (bad / "axial_T2.nii.gz").write_bytes((d / "case1" / "coronal_T2.nii.gz").read_bytes())
    return d


# quick registration settings: these tests check the batch machinery, not accuracy
FAST = ["--translator", "none", "--method", "ours", "--no-figure", "--device", "cpu", "--threads", "1",
        "--param", "init=header", "--param", "levels_mm=[4.0]", "--param", "iterations=[8]",
        "--param", "max_points=[20000]"]


def test_cli_batch_end_to_end_resume_and_determinism(tmp_path, sim_folder, capsys):
    inputs = sorted(p for p in sim_folder.rglob("*.nii.gz"))
    before = _digest(inputs)
    out = tmp_path / "out"
    code = _cli(["batch", str(sim_folder), "--out", str(out), "--progress", "json", *FAST])
    cap = capsys.readouterr()
    rows = _rows(out)
    assert rows["swapped"]["status"] == "failed" and "coronal" in rows["swapped"]["error"], rows["swapped"]
    assert code == 1
    for cid in ("case1", "case2"):
        assert rows[cid]["status"] == "done", rows[cid]
        assert rows[cid]["success"] in ("true", "false") and np.isfinite(float(rows[cid]["metric"]))
        for f in ("transform.json", "transform.tfm", "coronal_ceT1_on_axial.nii.gz", "fused.nii.gz",
                  "coronal_labels_on_axial.nii.gz", "axial_labels_on_coronal.nii.gz", "report.json", batch.MARKER):
            assert (out / cid / f).exists(), f
    assert not (out / "swapped").exists()
    evs = [json.loads(ln) for ln in cap.err.splitlines() if ln.startswith("{")]
    assert evs and evs[-1]["done"] == 3 and evs[-1]["total"] == 3
    assert {"register", "write"} <= {e.get("case_stage") for e in evs}
    assert "case swapped failed" in cap.err
    assert _digest(inputs) == before, "inputs must never be modified"

    # resume: finished cases are skipped (the failing one is retried and fails again)
    code = _cli(["batch", str(sim_folder), "--out", str(out), "--progress", "none", *FAST])
    rows2 = _rows(out)
    assert code == 1 and rows2["case1"]["status"] == "skipped" and rows2["case2"]["status"] == "skipped"
    assert rows2["case1"]["metric"] == rows["case1"]["metric"]

    # determinism: the same command with 2 worker processes (same thread count) gives identical results
    out2 = tmp_path / "out2"
    _cli(["batch", str(sim_folder), "--out", str(out2), "--progress", "none", "--jobs", "2", *FAST])
    for cid in ("case1", "case2"):
        t1 = json.loads((out / cid / "transform.json").read_text())
        t2 = json.loads((out2 / cid / "transform.json").read_text())
        assert t1["moving_to_fixed_ras"] == t2["moving_to_fixed_ras"]
        assert t1["metric"] == t2["metric"]
        for f in ("coronal_labels_on_axial.nii.gz", "coronal_ceT1_on_axial.nii.gz"):
            a = np.asanyarray(nib.load(str(out / cid / f)).dataobj)
            b = np.asanyarray(nib.load(str(out2 / cid / f)).dataobj)
            assert np.array_equal(a, b), f
    assert _digest(inputs) == before


# ----------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_interrupted_write_leaves_no_truncated_nifti(tmp_path, monkeypatch, suffix):
    """Ctrl-C in the middle of writing a NIfTI: the destination keeps its old bytes, no temp file stays.
    (.nii.gz is written by volume._write_file after compression, .nii by nibabel.)"""
    from MultimodalRegistrationLib import volume as volume_mod

    dest = tmp_path / f"vol{suffix}"
    save_volume(Volume(np.arange(64, dtype=np.float32).reshape(4, 4, 4), AX_AFFINE), dest)
    old = dest.read_bytes()
    real_save = nib.save

    def half_then_interrupt(img, filename):
        real_save(img, filename)
        with open(filename, "r+b") as f:
            f.truncate(20)
        raise KeyboardInterrupt

    def write_half_then_interrupt(filename, data):
        with open(filename, "wb") as f:
            f.write(data[:20])
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", half_then_interrupt)
    monkeypatch.setattr(volume_mod, "_write_file", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_volume(Volume(np.zeros((8, 8, 8), np.float32) + 3, AX_AFFINE), dest)
    monkeypatch.undo()
    assert dest.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"vol{suffix}"]
    assert load_volume(dest).shape == (4, 4, 4)


def test_killed_writer_never_replaces_the_destination(tmp_path):
    """kill -9 while writing: the destination is either absent or complete, never truncated."""
    import signal
    import subprocess
    import sys
    import time

    dest = tmp_path / "big.nii.gz"
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[2] / 'MultimodalRegistration')!r})\n"
        "from MultimodalRegistrationLib.volume import Volume, save_volume\n"
        "arr = np.random.default_rng(0).random((200, 200, 200)).astype(np.float32)\n"
        "print('ready', flush=True)\n"
        f"save_volume(Volume(arr, np.eye(4)), {str(dest)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.time()
    while time.time() - t0 < 30 and not any(".part" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dest.exists(), "a killed writer must not leave the destination behind"
    # what may remain is a hidden temporary file, never under the destination's name
    assert all(p.name.startswith(".big.nii.gz.") and ".part" in p.name for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- shards and --merge

def test_shards_are_deterministic_disjoint_and_cover_the_manifest(tmp_path):
    cases = [Case(f"c{i}", tmp_path / "a", tmp_path / "b") for i in range(7)]
    shards = [batch.shard_cases(cases, k, 3) for k in (1, 2, 3)]
    assert [[c.case_id for c in s] for s in shards] == [["c0", "c3", "c6"], ["c1", "c4"], ["c2", "c5"]]
    assert batch.parse_shard(" 2/3 ") == (2, 3)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0", ""):
        with pytest.raises(ManifestError, match="shard"):
            batch.parse_shard(bad)


def test_shards_share_out_then_merge_into_one_summary_and_report(tmp_path, capsys):
    from MultimodalRegistrationLib.errors import MMRegError
    d = tmp_path / "in"
    cases = [_make_case(d, f"p{i}") for i in range(4)] + [_make_case(d, "p4", cor_name="fail_coronal.nii.gz")]
    out = tmp_path / "out"
    out.mkdir()
    # shard 2 runs while shard 1 holds its locks (two machines at once): allowed ...
    with batch.runner.OutLock(out, (1, 2)):
        r2 = batch.run_batch(cases, out, PARAMS, run_case=fake_run_case, shard=(2, 2))
        # ... but the same shard twice, or a whole-manifest batch, is refused
        with pytest.raises(MMRegError, match="another 'mmreg batch'"):
            batch.run_batch(cases, out, PARAMS, run_case=fake_run_case, shard=(1, 2))
        with pytest.raises(MMRegError, match="another 'mmreg batch'"):
            batch.run_batch(cases, out, PARAMS, run_case=fake_run_case)
    assert [r.case_id for r in r2] == ["p1", "p3"]
    assert not (out / batch.SUMMARY).exists(), "a shard must not write the whole summary"
    with pytest.raises(InputError, match="shard.* 1/2"):
        batch.merge_shards(out)
    r1 = batch.run_batch(cases, out, PARAMS, run_case=fake_run_case, shard=(1, 2))
    assert [r.case_id for r in r1] == ["p0", "p2", "p4"]
    s1 = batch.read_summary(out / "summary-shard-1-of-2.csv")
    s2 = batch.read_summary(out / "summary-shard-2-of-2.csv")
    assert [r["case_id"] for r in s1] == ["p0", "p2", "p4"] and [r["case_id"] for r in s2] == ["p1", "p3"]
    assert (out / "report-shard-1-of-2.html").is_file()
    assert _cli(["batch", "--merge", str(out)]) == 1   # p4 failed
    assert "merged 5 cases: 4 finished, 1 failed" in capsys.readouterr().out
    rows = batch.read_summary(out / batch.SUMMARY)
    assert [r["case_id"] for r in rows] == [f"p{i}" for i in range(5)]
    assert [r["status"] for r in rows] == ["done"] * 4 + ["failed"]
    assert rows[1] == s2[0]
    page = (out / batch.REPORT).read_text()
    assert '"id":"p4"' in page and '"status":"failed"' in page
    # a resumed shard skips its finished cases; a shard summary of another N makes --merge refuse
    r1b = batch.run_batch(cases, out, PARAMS, run_case=fake_run_case, shard=(1, 2))
    assert [r.status for r in r1b] == ["skipped", "skipped", "failed"]
    (out / "summary-shard-1-of-3.csv").write_text((out / "summary-shard-1-of-2.csv").read_text())
    with pytest.raises(InputError, match="different shard counts"):
        batch.merge_shards(out)
