"""Registration methods recover known rigid offsets on simulated cases (TRE in mm vs ground truth)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from MultimodalRegistrationLib import metrics
from MultimodalRegistrationLib.errors import InputError
from MultimodalRegistrationLib.geometry import about, rotvec_matrix
from MultimodalRegistrationLib.registration import METHODS, RegistrationResult, register
from MultimodalRegistrationLab import simulate

FAST_PAPER = {"pixel_mm": 4.0, "n_iter": 8, "lr0": 1.5}


def _tre(case, M, moving=None):
    pts = metrics.overlap_points(moving or case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    return metrics.tre(M, case.moving_to_fixed, pts)


def _with_header_error(case, deg, mm, axis=(0.3, 1.0, 0.5), direction=(1.0, -0.5, 0.7)):
    """The same case with an extra known rigid error of ``deg``/``mm`` written into the coronal header."""
    ax = np.asarray(axis, float) / np.linalg.norm(axis)
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    c = case.coronal_t2.center_world()
    E = about(rotvec_matrix(np.radians(deg) * ax), c, d * mm)
    mk = lambda v: None if v is None else v.__class__(v.array, E @ v.affine)  # noqa: E731
    return replace(case, coronal_t2=mk(case.coronal_t2), coronal_cet1=mk(case.coronal_cet1),
                   coronal_labels=mk(case.coronal_labels), moving_to_fixed=case.moving_to_fixed @ np.linalg.inv(E))


@pytest.fixture(scope="module")
def cases(brats_source):
    return [simulate.simulate_case(brats_source, seed=s, params="fast") for s in (3, 11)]


def test_result_contract_and_errors(fast_case):
    calls = []
    r = register(fast_case.coronal_t2, fast_case.axial_t2, "ours", progress=lambda *a: calls.append(a))
    assert isinstance(r, RegistrationResult) and r.method == "search-ncc"   # "ours" is the old name
    assert r.moving_to_fixed.shape == (4, 4) and np.allclose(r.moving_to_fixed[3], [0, 0, 0, 1])
    assert np.allclose(np.linalg.det(r.moving_to_fixed[:3, :3]), 1.0, atol=1e-6)
    assert r.seconds > 0 and r.success and np.isfinite(r.metric)
    json.dumps(r.to_json())
    json.dumps(r.details)
    assert calls and all(c[0] == "register" for c in calls) and calls[-1][1] == calls[-1][2]
    with pytest.raises(InputError):
        register(fast_case.coronal_t2, fast_case.axial_t2, "nope")
    with pytest.raises(InputError):
        register(fast_case.coronal_t2, fast_case.axial_t2, "ours", params={"bogus": 1})
    assert METHODS == ("search-cr", "search-ncc", "paper", "mi")


@pytest.mark.parametrize("optimizer", ["lm", "lbfgs"])
def test_search_ncc_recovers_known_offset(cases, optimizer):
    for case in cases:
        r = register(case.coronal_t2, case.axial_t2, "ours", params={"optimizer": optimizer})
        t = _tre(case, r.moving_to_fixed)
        assert t["median"] < 0.3 and t["p95"] < 0.5, t     # observed 0.12-0.14 / 0.14-0.25 mm
        assert r.success


def test_search_ncc_analytic_jacobian_matches_finite_differences(fast_case):
    """The LM step's Jacobian (sampled image gradient x derivative of the sample positions) against
    central differences of the slice-profile-averaged samples, for all 6 rigid parameters."""
    import torch
    from MultimodalRegistrationLib.registration.images import robust_scale, signal_mask
    from MultimodalRegistrationLib.registration.refine import Level, ncc_and_jacobian

    case = fast_case
    mov = np.asarray(case.coronal_t2.array, np.float32)
    fix = np.asarray(case.axial_t2.array, np.float32)
    mov, fix = mov / robust_scale(mov), fix / robust_scale(fix)
    lvl = Level(case.coronal_t2, mov, case.axial_t2, fix, signal_mask(fix, 0.08, 1), 4.0, 3, 4000, 0,
                torch.device("cpu"))
    M = about(rotvec_matrix(np.radians([2.0, -1.0, 1.5])), case.axial_t2.center_world(), [1.5, -2.0, 1.0]) \
        @ case.moving_to_fixed
    c = case.axial_t2.center_world() + np.array([5.0, -3.0, 2.0])
    ncc, frac, mv, w, J, rows = ncc_and_jacobian(M, lvl, c)
    assert np.isfinite(ncc) and 0.05 < frac <= 1.0 and J.shape == (len(rows), 6) and 0 < len(rows) < lvl.n
    assert (w > 0).all()                           # only the points with a sample inside the stack
    keep = (w > 0.999).numpy()                     # points well inside the coronal stack

    def samples_at(pose):                          # the moving samples of every point (0 outside the stack)
        out = ncc_and_jacobian(pose, lvl, c, jac=False)
        full = np.zeros(lvl.n)
        full[out[5].numpy()] = out[2].numpy()
        return full[rows.numpy()]

    for k, h in enumerate([0.004] * 3 + [0.3] * 3):
        dx = np.zeros(6)
        dx[k] = h
        mp = samples_at(about(rotvec_matrix(dx[:3]), c, dx[3:]) @ M)
        mm = samples_at(about(rotvec_matrix(-dx[:3]), c, -dx[3:]) @ M)
        fd = ((mp - mm) / (2 * h))[keep]
        an = J[:, k].numpy()[keep]
        r = np.corrcoef(fd, an)[0, 1]
        scale = np.dot(fd, an) / np.dot(an, an)
        assert r > 0.9 and 0.8 < scale < 1.25, (k, r, scale)


def test_search_ncc_global_search_recovers_15mm_8deg(fast_case):
    case = _with_header_error(fast_case, 8.0, 15.0)
    t0 = _tre(case, np.eye(4))
    assert t0["median"] > 10.0                             # the headers alone are far off
    r = register(case.coronal_t2, case.axial_t2, "ours")
    t = _tre(case, r.moving_to_fixed)
    assert t["median"] < 0.3 and t["p95"] < 0.5, t
    rot, trans = metrics.transform_error(r.moving_to_fixed, case.moving_to_fixed, case.axial_t2.center_world())
    assert rot < 1.0 and trans < 1.5


def test_search_ncc_rejects_bad_parameters(fast_case):
    for bad in ({"levels_mm": [4.0, 2.0], "iterations": [10]}, {"optimizer": "newton"}, {"init": "guess"},
                {"no_such_option": 1}):
        with pytest.raises(InputError):
            register(fast_case.coronal_t2, fast_case.axial_t2, "ours", params=bad)


def test_search_ncc_trusting_headers_refines_small_offsets(fast_case):
    r = register(fast_case.coronal_t2, fast_case.axial_t2, "ours", params={"init": "header"})
    assert _tre(fast_case, r.moving_to_fixed)["median"] < 0.3


@pytest.mark.parametrize("seed", [7])
def test_paper_recovers_known_offset(brats_source, seed):
    # the paper's search moves in-plane and through subsets only: give it in-plane offsets to find.
    # It does not succeed on every case (seeds 9 and 13 end 3 mm off; benchmark: about half of the
    # bench cases): this pins one case it does solve, with the geometry checked against the truth.
    p = replace(simulate.PRESETS["fast"], header_rot_deg=1.0, max_tilt_deg=1.0, header_shift_mm=10.0)
    case = simulate.simulate_case(brats_source, seed=seed, params=p)
    r = register(case.coronal_t2, case.axial_t2, "paper", params=FAST_PAPER)
    t = _tre(case, r.moving_to_fixed)
    assert t["median"] < 2.0, t
    assert r.subset_index is not None and r.subset_metrics is not None
    kept = [m for m in r.subset_metrics if m is not None]
    assert r.metric == pytest.approx(min(kept))
    assert r.details["n_subsets_kept"] < r.details["n_subsets_enumerated"]


def test_mi_baseline_runs_and_recovers_small_offset_from_headers(fast_case, cases):
    # the notebook's shrink factors (4, 2, 1) also shrink the thick axis; full resolution recovers the
    # offset. One ITK thread: the MI result depends on the thread split (seed 11: 1.4-3.4 mm with 2).
    for case in (fast_case, cases[1]):
        r = register(case.coronal_cet1, case.axial_t2, "mi",
                     params={"init": "header", "interpolation": "linear", "shrink": (1, 1, 1), "threads": 1})
        assert r.method == "mi" and np.isfinite(r.metric)
        t = _tre(case, r.moving_to_fixed, case.coronal_cet1)
        assert t["median"] < 2.0, t


@pytest.mark.data
def test_evaluate_benchmark_smoke(tmp_path):
    import csv
    from MultimodalRegistrationLab import evaluate
    out = tmp_path / "bench"
    assert evaluate.main(["--cases", "1", "--preset", "fast", "--methods", "ours", "--threads", "1",
                          "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 1 and rows[0]["method"] == "ours" and float(rows[0]["tre_mean"]) < 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"][0]["success_rate"] == 1.0
    assert "| ours | 1 |" in (out / "summary.md").read_text()


def test_search_cr_registers_real_cet1_to_t2_and_flags_it(cases):
    """The default works on the original (real BraTS) ceT1 against the T2, with no translator, and its
    forward/backward check marks the results as consistent."""
    for case in cases:
        r = register(case.coronal_cet1, case.axial_t2, "search-cr")
        t = _tre(case, r.moving_to_fixed, case.coronal_cet1)
        assert r.method == "search-cr" and t["mean"] < 1.0, t    # observed 0.36 and 0.60 mm
        cons = r.details["consistency"]
        assert r.success is True and cons["mm"] < cons["threshold_mm"], cons


def test_search_cr_flags_a_wrong_result_and_the_backward_run_rescues_it(cases):
    """A forward result forced far from the truth (search off, 2 steps, start 25 mm away) disagrees with
    the backward run, which has its own search: without the rescue it is flagged unsuccessful; with it
    (the default) the forward direction restarts from the backward result and both agree on the truth."""
    case = _with_header_error(cases[0], 0.0, 25.0)
    forced = {"init": "header", "iterations": (2, 2), "nmi_polish": False}   # the polish: its own test
    r = register(case.coronal_cet1, case.axial_t2, "search-cr",
                 params=dict(forced, rescue=False, passes=1, vote=False))
    alone = _tre(case, r.moving_to_fixed, case.coronal_cet1)["mean"]
    assert alone > 10
    assert r.success is False and r.details["consistency"]["mm"] > 10
    # with the second metric's vote, an unsuccessful result is the estimate NMI prefers: here the
    # backward one (its own search), nearer the truth; still flagged unsuccessful
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=dict(forced, rescue=False, passes=1))
    assert r.success is False and r.details["vote"]["chosen"] == "the backward estimate"
    # nearer the truth than the forward estimate (25.7 mm observed): 14.8 mm observed after its 2 steps
    # from the search's nearest lattice rotation (7.5 mm with the earlier cubic lattice)
    assert _tre(case, r.moving_to_fixed, case.coronal_cet1)["mean"] < alone - 5.0
    r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=forced)
    c = r.details["consistency"]
    assert c["restarted_from_the_other"] == ["forward"]
    # the restart, like the backward run, gets only 2 steps per level here: the two agree (1.6 mm
    # observed) on the backward run's estimate, which is nearer the truth than the forward one alone but
    # not at it (14.1 mm observed: 2 steps from the search's 12 mm grid and 15-degree lattice)
    backward = _tre(case, np.linalg.inv(c["backward_fixed_to_moving_ras"]), case.coronal_cet1)["mean"]
    result = _tre(case, r.moving_to_fixed, case.coronal_cet1)["mean"]
    assert c["mm"] < 2.0 and abs(result - backward) < 1.0 and result < alone - 2.0, (alone, backward, result)


def test_search_cr_directions_on_two_threads_give_the_serial_result(cases, monkeypatch):
    """The forward and backward registrations run at once when two cores may be used; each is
    deterministic on its own, so the result is the serial one to the last bit."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    case = _with_header_error(cases[1], 12.0, 20.0)       # a case that needs the rescue and a second pass too
    runs = {c: register(case.coronal_cet1, case.axial_t2, "search-cr", params={"concurrent": c}) for c in (True, False)}
    assert runs[True].details["consistency"]["directions_run_concurrently"] is True
    assert runs[False].details["consistency"]["directions_run_concurrently"] is False
    assert np.array_equal(runs[True].moving_to_fixed, runs[False].moving_to_fixed)
    assert runs[True].details["consistency"]["passes"] == runs[False].details["consistency"]["passes"]


def test_search_engine_cache_reuses_the_preparation_and_gives_the_same_result(fast_case):
    """search-cr's restarts of one direction share a preparation cache: the second registration from
    another start takes the scaled images, sample points and search features from it, and every result
    is the one computed without the cache, to the last bit."""
    from MultimodalRegistrationLib.registration.params import SearchCrParams
    from MultimodalRegistrationLib.registration.search_ncc import register_search_ncc

    p = SearchCrParams().engine()
    start = about(rotvec_matrix(np.radians([2.0, -1.0, 1.5])), fast_case.coronal_cet1.center_world(), [3.0, -2.0, 1.0])
    restart = p.replace(init="header", initial_transform=start)
    cache = {}
    first = register_search_ncc(fast_case.coronal_cet1, fast_case.axial_t2, params=p, cache=cache)
    kinds = sorted({k[0] for k in cache})
    assert kinds == ["centroids", "images", "knots", "level", "search"], kinds
    filled = {k: id(v) for k, v in cache.items()}
    second = register_search_ncc(fast_case.coronal_cet1, fast_case.axial_t2, params=restart, cache=cache)
    assert {k: id(v) for k, v in cache.items()} == filled          # nothing recomputed, nothing added
    for params, cached in ((p, first), (restart, second)):
        alone = register_search_ncc(fast_case.coronal_cet1, fast_case.axial_t2, params=params)
        assert np.array_equal(alone.moving_to_fixed, cached.moving_to_fixed) and alone.metric == cached.metric


def test_side_job_runs_once_on_the_first_caller():
    import threading

    from MultimodalRegistrationLib.registration.search_cr import _SideJobs

    ran = []
    once = _SideJobs([lambda: ran.append(threading.current_thread().name)])
    threads = [threading.Thread(target=once, name=f"t{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    once()
    assert len(ran) == 1
    _SideJobs()()          # without a job: nothing to run


def test_side_jobs_are_shared_between_the_threads_that_come_free():
    import threading

    from MultimodalRegistrationLib.registration.search_cr import _SideJobs

    first_started, release = threading.Event(), threading.Event()
    ran = {}

    def long_job():
        ran["long"] = threading.current_thread().name
        first_started.set()
        assert release.wait(10)

    def short_job():
        ran["short"] = threading.current_thread().name
        release.set()

    side = _SideJobs([long_job, short_job])
    a = threading.Thread(target=side, name="first free")
    a.start()
    assert first_started.wait(10)
    b = threading.Thread(target=side, name="second free")   # comes free while the first job still runs
    b.start()
    side.wait()
    a.join()
    b.join()
    assert ran == {"long": "first free", "short": "second free"}


def test_side_jobs_wait_runs_a_job_nobody_ran_and_reraises_its_error():
    from MultimodalRegistrationLib.registration.search_cr import _SideJobs

    ran = []
    once = _SideJobs([lambda: ran.append(1)])
    once.wait()
    once.wait()
    assert ran == [1]

    def broken():
        raise RuntimeError("polisher failed")

    failing = _SideJobs([broken])
    failing()                       # a direction thread runs it: the error is kept, not raised there
    with pytest.raises(RuntimeError, match="polisher failed"):
        failing.wait()              # but where its work is needed


def test_pair_returns_both_results_without_waiting_for_the_side_jobs():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from MultimodalRegistrationLib.registration.search_cr import _SideJobs, _pair

    release, started = threading.Event(), threading.Event()
    done_by = []

    def slow_job():                 # e.g. the polisher, on the backward thread that finished first
        done_by.append(threading.current_thread().name)
        started.set()
        assert release.wait(10)

    first = _SideJobs([slow_job])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backward") as pool:
        fwd, bwd = _pair(pool, lambda: started.wait(10) and "forward", lambda: "backward", first)
        assert (fwd, bwd) == ("forward", "backward")
        assert not first._done.is_set()          # the pair did not wait for it
        release.set()
        first.wait()
    assert done_by[0].startswith("backward")

    with ThreadPoolExecutor(max_workers=1) as pool:
        def fails():
            raise ValueError("backward failed")
        with pytest.raises(ValueError, match="backward failed"):
            _pair(pool, lambda: "forward", fails)
    assert _pair(None, lambda: 1, lambda: 2, _SideJobs([lambda: None])) == (1, 2)


def test_signal_points_give_overlap_points_for_any_pose(fast_case):
    from MultimodalRegistrationLib.metrics import SignalPoints

    moving, fixed = fast_case.coronal_cet1, fast_case.axial_t2
    signal = SignalPoints(moving)
    for m in (fast_case.moving_to_fixed, np.eye(4),
              about(rotvec_matrix(np.radians([0.0, 20.0, 5.0])), moving.center_world(), [30.0, 0.0, -10.0])):
        for n in (4000, 20000):
            assert np.array_equal(signal.inside(fixed, m, max_points=n), metrics.overlap_points(moving, fixed, m,
                                                                                                  max_points=n))


def test_search_cr_without_check_says_success_is_unknown(fast_case):
    r = register(fast_case.coronal_cet1, fast_case.axial_t2, "search-cr", params={"consistency": False})
    assert r.success is None and "unknown" in r.details["success_note"]
    with pytest.raises(InputError):
        register(fast_case.coronal_cet1, fast_case.axial_t2, "search-cr", params={"similarity": "mind"})
    with pytest.raises(InputError):
        register(fast_case.coronal_cet1, fast_case.axial_t2, "search-cr", params={"cr_bins": 2})


@pytest.mark.parametrize("min_gain,tries,overshoot,evaluations", [
    (1e-6, 5, False, 1 + 8),     # steps halve the distance (1 mm): the eighth is under 0.005 mm
    (0.1, 5, False, 1 + 3),      # gains 0.75, 0.19, 0.047: the third is under min_gain
    (1e-6, 5, True, 1 + 5),      # every try overshoots (the metric drops): five tries, then it stops
    (1e-6, 2, True, 1 + 2),      # ... or two
])
def test_levenberg_marquardt_stops_at_its_minimum_gain_and_tries(min_gain, tries, overshoot, evaluations):
    """The LM loop's stopping rules, on a model whose metric is minus the squared distance (mm) of the
    translation to a target and whose step is half the way there (or three times past it)."""
    import torch

    from MultimodalRegistrationLib.registration.refine import levenberg_marquardt

    target = np.array([1.0, 0.0, 0.0])
    calls = []

    def evaluate(M, c):
        calls.append(1)
        return (-float(np.sum((M[:3, 3] - target) ** 2)), 1.0, M[:3, 3].copy())

    state = {}

    def system(s):
        state["x"] = s[2]
        return torch.eye(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64), 0

    def step(theta):
        remaining = target - state["x"]
        return np.concatenate([np.zeros(3), remaining * (3.0 if overshoot else 0.5)])

    M, metric, _ = levenberg_marquardt(np.eye(4), np.zeros(3), 40, evaluate, system, step, min_gain=min_gain,
                                       tries=tries)
    assert len(calls) == evaluations
    assert metric == (-1.0 if overshoot else -float(np.sum((M[:3, 3] - target) ** 2)))


def test_cr_fit_recovers_a_nonlinear_intensity_map():
    """The correlation ratio of a ~ f(m) is 1 for any piecewise-linear f on the knots (even a
    non-monotonic one: T1 dark CSF is T2 bright), and 0 for unrelated intensities."""
    import torch
    from MultimodalRegistrationLib.registration.refine import cr_fit
    g = torch.Generator().manual_seed(0)
    m = torch.rand(5000, generator=g, dtype=torch.float64)
    knots = torch.linspace(0, 1, 9, dtype=torch.float64)
    a = torch.where(m < 0.5, 1.0 - 2 * m, 2 * (m - 0.5) * 0.6)
    w = torch.ones_like(m)
    cr, c, *_ = cr_fit(m, a, w, knots)
    assert cr > 0.999
    cr0, *_ = cr_fit(m, torch.rand(5000, generator=g, dtype=torch.float64), w, knots)
    assert cr0 < 0.01


@pytest.mark.parametrize("threads, method, alongside", [
    ("2", "search-cr", False), ("2", "mi", False), ("3", "search-cr", True), ("4", "mi", True),
    ("4", "search-ncc", False), ("4", "paper", False), ("1", "search-cr", False)])
def test_translator_runs_alongside_only_with_a_core_of_its_own(monkeypatch, threads, method, alongside):
    """On two cores search-cr's two directions keep both busy: the translator runs before the registration
    (with both) instead of beside it; the monomodal methods register the synthetic T2, so it always comes
    first."""
    from MultimodalRegistrationLib.pipeline import translate_alongside

    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    assert translate_alongside(method) is alongside


def test_search_scores_a_batch_of_rotations_as_it_scores_each_alone(fast_case):
    """The FFT search scores its rotations in batches (one sampling call, one batch of FFTs): the same
    best score and pose per rotation as scoring each alone, and a sampled moving image that matches
    trilinear sampling at the voxel positions the pose gives."""
    import torch

    from MultimodalRegistrationLib import geometry
    from MultimodalRegistrationLib.registration.images import gradient_magnitude, signal_mask
    from MultimodalRegistrationLib.registration.search import SearchGrid, moving_for_search, rotation_lattice
    from MultimodalRegistrationLib.registration.sampling import sample_voxels

    mov = np.asarray(fast_case.coronal_cet1.array, np.float32)
    fix = np.asarray(fast_case.axial_t2.array, np.float32)
    fixed = fast_case.axial_t2
    mov_t, shrunk = moving_for_search(mov / mov.max(), fast_case.coronal_cet1, 12.0)
    mov_t = torch.from_numpy(gradient_magnitude(mov_t[0, 0].numpy(), shrunk.spacing))[None, None]
    grid = SearchGrid(gradient_magnitude(fix / fix.max(), fixed.spacing), fixed, signal_mask(fix, 0.08, 1),
                      12.0, 50.0)
    c = shrunk.center_world()
    poses = [about(rotvec_matrix(rv), c) for rv in rotation_lattice(20.0, 10.0)]
    batch = grid.score_many(mov_t, shrunk, poses)
    assert len(batch) == len(poses) == 33
    for (s_b, m_b), pose in zip(batch, poses):
        s_1, m_1 = grid.score(mov_t, shrunk, pose)
        assert abs(s_b - s_1) < 1e-5 and np.allclose(m_b, m_1, atol=1e-9)
    # the sampling itself against voxel positions computed the direct way
    values, inside = grid.sample_moving_many(mov_t, shrunk, poses[5:7])
    idx = np.indices(grid.shape).reshape(3, -1).T.astype(np.float64)
    for k, pose in enumerate(poses[5:7]):
        vox = geometry.apply(np.linalg.inv(shrunk.affine) @ np.linalg.inv(pose) @ grid.index_to_world, idx)
        size = np.asarray(shrunk.shape, np.float64)
        ins = np.all((vox >= -0.5) & (vox <= size - 0.5), axis=1)
        ref = sample_voxels(mov_t, torch.from_numpy(vox.astype(np.float32)),
                            torch.tensor(shrunk.shape, dtype=torch.float32))[0].numpy()
        ref = np.where(ins, ref, 0.0)
        assert ins.sum() > 300                                  # not an empty comparison
        assert (inside[k].ravel() != ins).mean() < 1e-3          # float32 rounding at the very border
        both = inside[k].ravel() == ins
        assert np.abs(values[k].ravel()[both] - ref[both]).max() < 1e-4 * float(mov_t.max())


def test_search_scores_a_translated_start_from_the_same_correlations(fast_case):
    """A start translated by tau and rotated about its translated centre is the start's rotated pose
    translated by tau: one grid with a window around no shift and one around tau scores the searches
    around both starts from one set of FFTs. With tau a whole number of grid steps the two lattices of
    shifts coincide, and each window gives what a grid of its own gives for its start: the same best
    pose, the same score (to float32 rounding)."""
    import torch

    from MultimodalRegistrationLib.registration.images import gradient_magnitude, signal_mask
    from MultimodalRegistrationLib.registration.search import SearchGrid, moving_for_search, rotation_lattice

    mov = np.asarray(fast_case.coronal_cet1.array, np.float32)
    fix = np.asarray(fast_case.axial_t2.array, np.float32)
    fixed = fast_case.axial_t2
    mov_t, shrunk = moving_for_search(mov / mov.max(), fast_case.coronal_cet1, 12.0)
    mov_t = torch.from_numpy(gradient_magnitude(mov_t[0, 0].numpy(), shrunk.spacing))[None, None]
    args = (gradient_magnitude(fix / fix.max(), fixed.spacing), fixed, signal_mask(fix, 0.08, 1), 12.0, 50.0)
    tau = fixed.direction @ np.array([3.0, -2.0, 4.0]) * 12.0        # 36, -24, 48 mm along the fixed axes
    joint = SearchGrid(*args, offsets=[np.zeros(3), tau])
    alone = SearchGrid(*args)
    assert np.prod(joint.shape) > np.prod(alone.shape)                # room for the second window's shifts
    c = shrunk.center_world()
    poses = [about(rotvec_matrix(rv), c) for rv in rotation_lattice(20.0, 10.0)][:9]
    translate = np.eye(4)
    translate[:3, 3] = tau
    both = joint.score_windows(mov_t, shrunk, poses)
    first = alone.score_many(mov_t, shrunk, poses)
    second = alone.score_many(mov_t, shrunk, [translate @ p for p in poses])
    for (w0, w1), a, b in zip(both, first, second):
        # observed: scores 7e-7 apart (float32 sums of a different FFT size), poses 1.4e-14
        assert abs(w0[0] - a[0]) < 3e-6 and np.allclose(w0[1], a[1], rtol=0, atol=1e-9)
        assert abs(w1[0] - b[0]) < 3e-6 and np.allclose(w1[1], b[1], rtol=0, atol=1e-9)
    # the windows are not the same search: the second one's best shifts lie around tau
    assert any(not np.allclose(w0[1], w1[1], atol=1e-3) for w0, w1 in both)


def test_rotation_lattices_cover_the_ball_as_documented():
    from MultimodalRegistrationLib.registration.search import rotation_lattice

    rng = np.random.default_rng(0)
    probe = rng.normal(size=(4000, 3))
    probe *= (22.0 * rng.random(4000) ** (1 / 3) / np.linalg.norm(probe, axis=1))[:, None]   # within 22 deg
    for kind, step, n, cover in (("cubic", 10.0, 123, 10.0 * np.sqrt(3) / 2), ("bcc", 15.0, 65, 15.0 * np.sqrt(5) / 4)):
        lattice = np.degrees(np.array(rotation_lattice(30.0, step, kind)))
        assert len(lattice) == n and np.array_equal(lattice[0], np.zeros(3))
        norms = np.linalg.norm(lattice, axis=1)
        assert norms.max() <= 30.0 + 1e-6 and np.all(np.diff(norms) >= -1e-9)        # smallest first
        nearest = np.linalg.norm(probe[:, None] - lattice[None], axis=2).min(axis=1)
        assert nearest.max() <= cover + 1e-6 and nearest.max() > 0.85 * cover      # the covering radius
    with pytest.raises(ValueError):
        rotation_lattice(30.0, 10.0, "hexagonal")


def test_robust_scale_equals_numpys_percentile_of_the_positive_voxels():
    from MultimodalRegistrationLib.registration.images import _percentile_of_positive, robust_scale

    def numpy_way(a, q):
        pos = a[a > 0]
        s = float(np.percentile(pos, q)) if pos.size else float(np.abs(a).max())
        return s if s > 0 else 1.0

    rng = np.random.default_rng(3)
    fast = 0
    for i in range(400):
        n = 50 * int(rng.integers(100, 4000))
        kind = i % 4
        if kind == 0:
            a = rng.random(n)
        elif kind == 1:
            a = rng.normal(size=n)                                   # half of the voxels negative
        elif kind == 2:
            a = np.round(rng.random(n) * rng.integers(2, 300))       # many ties, many zeros
        else:
            a = rng.exponential(size=n) * (rng.random(n) > 0.8)      # mostly background
        a = a.astype(np.float32).reshape(-1, 50, 1)
        a = np.asfortranarray(a) if i % 2 else a                      # NIfTI arrays come Fortran-ordered
        q = float(rng.choice([99.0, 99.5, 98.0, 90.0]))
        fast += _percentile_of_positive(a, q) is not None
        assert robust_scale(a, q) == numpy_way(a, q), (i, q)
    assert fast > 250                                                 # the fast path is the one tested
    assert robust_scale(np.zeros((40, 40, 40), np.float32)) == 1.0
    assert robust_scale(-np.ones((40, 40, 40), np.float32)) == 1.0


def test_optional_side_jobs_run_only_while_the_other_direction_is_busy():
    from MultimodalRegistrationLib.registration.search_cr import _SideJobs

    ran = []
    side = _SideJobs([lambda: ran.append("required")], optional=[lambda: ran.append("optional")])
    side(other_busy=lambda: False)
    assert ran == ["required"]
    side(other_busy=lambda: True)
    assert ran == ["required", "optional"]
    side.wait()
    dropped = _SideJobs([], optional=[lambda: ran.append("never")])
    dropped.wait()                                   # not started: dropped, not run here
    dropped(other_busy=lambda: True)
    assert "never" not in ran
