"""``mmreg batch --executor dask`` on a small LocalCluster (2 worker processes), and --shard/--merge.

Dask is a test dependency (pyproject ``test`` extra): these tests import it directly and fail, never
skip, when it is missing. The fakes of test_batch.py stand in for the pipeline (module-level, so the
Dask workers import them by name: pytest puts Testing/ on sys.path and spawned workers inherit it).
"""
from __future__ import annotations

import json
import time

import distributed  # noqa: F401  (a missing Dask must fail this module, not skip it)
import pytest

from MultimodalRegistrationLib import batch
from test_batch import PARAMS, _make_case, _rows, calls, fake_run_case, slow_run_case  # noqa: F401 (fixture)


def test_dask_matches_local_survives_a_dying_worker_and_times_out_a_stuck_case(tmp_path, calls):
    d = tmp_path / "in"
    # several cases after the stuck one: if its worker were not stopped, some would queue behind it
    cases = [_make_case(d, f"p{i}", labels=(i == 0)) for i in range(6)]
    crash = _make_case(d, "zz", cor_name="crash_coronal.nii.gz")      # kills its worker process each time
    stuck = _make_case(d, "stuck", cor_name="slow_coronal.nii.gz")    # sleeps 60 s
    bad = _make_case(d, "bad", cor_name="fail_coronal.nii.gz")        # a Python error: fails alone
    local, dsk = tmp_path / "local", tmp_path / "dask"
    batch.run_batch(cases, local, PARAMS, run_case=slow_run_case)

    events = []
    t0 = time.monotonic()
    res = batch.run_batch([cases[0], crash, stuck, bad, *cases[1:]], dsk, PARAMS, run_case=slow_run_case,
                          executor="dask", jobs=2, case_timeout=5.0, progress=events.append)
    elapsed = time.monotonic() - t0
    st = {r.case_id: r for r in res}
    assert st["zz"].status == "failed" and "worker process" in st["zz"].error, st["zz"]
    tries = [c.split(":")[0] for c in calls()]
    assert tries.count("zz") == 2, "a case that kills its worker is tried exactly twice"
    assert tries.count("p1") == 2, "innocent cases run once (here and in the local batch above)"
    assert st["stuck"].status == "failed" and "timed out" in st["stuck"].error, st["stuck"]
    assert st["bad"].status == "failed" and "is unusable" in st["bad"].error and "\n" not in st["bad"].error
    assert elapsed < 58, f"the stuck case (60 s) was waited for ({elapsed:.0f} s)"
    for c in cases:
        assert st[c.case_id].status == "done", st[c.case_id]
        # the same bytes as the local executor, and the same marker content (but for timing fields)
        assert (local / c.case_id / "transform.json").read_bytes() == (dsk / c.case_id / "transform.json").read_bytes()
        ml = json.loads((local / c.case_id / batch.MARKER).read_text())
        md = json.loads((dsk / c.case_id / batch.MARKER).read_text())
        assert md["hash"] == ml["hash"] and md["output_sha256"] == ml["output_sha256"]
    assert (dsk / "p0" / "coronal_labels_on_axial.nii.gz").exists()
    for cid in ("zz", "stuck", "bad"):
        assert not (dsk / cid).exists(), f"a failed case left OUT/{cid}"
    assert not (dsk / batch.STAGING).exists()
    rows = _rows(dsk)
    assert list(rows) == ["p0", "zz", "stuck", "bad", "p1", "p2", "p3", "p4", "p5"]
    assert {k: v["status"] for k, v in rows.items()} == {k: r.status for k, r in st.items()}
    assert (dsk / batch.REPORT).is_file()
    # worker progress reaches the batch through Dask events, in the same event format
    assert any(e.get("case_stage") == "register" and e.get("case_total") == 2 for e in events)
    assert events[-1]["done"] == 9 and events[-1]["total"] == 9

    # resume with Dask: finished cases are skipped (by the same markers), failed ones tried again
    res2 = batch.run_batch([cases[0], bad, *cases[1:]], dsk, PARAMS, run_case=fake_run_case, executor="dask",
                           jobs=2)
    assert {r.case_id: r.status for r in res2} == {"bad": "failed", **{c.case_id: "skipped" for c in cases}}


def test_dask_address_requires_the_dask_executor(tmp_path):
    c = _make_case(tmp_path / "in", "p0")
    from MultimodalRegistrationLib.errors import InputError
    with pytest.raises(InputError, match="--executor dask"):
        batch.run_batch([c], tmp_path / "o", PARAMS, run_case=fake_run_case, dask_address="tcp://127.0.0.1:1")


def test_unreachable_scheduler_is_a_one_line_error(tmp_path, monkeypatch):
    from MultimodalRegistrationLib.batch import dask_executor
    from MultimodalRegistrationLib.errors import InputError
    monkeypatch.setattr(dask_executor, "CONNECT_TIMEOUT_S", 2)
    c = _make_case(tmp_path / "in", "p0")
    t0 = time.monotonic()
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        batch.run_batch([c], tmp_path / "o", PARAMS, run_case=fake_run_case, executor="dask",
                        dask_address="tcp://127.0.0.1:9")
    assert time.monotonic() - t0 < 15
    assert _rows(tmp_path / "o")["p0"]["status"] == "pending"
