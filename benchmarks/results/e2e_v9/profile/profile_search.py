"""Serial (one core, directions one after the other) in-process profile of search-cr on four real-contrast
suite cases: per direction, the FFT search's seconds and the LM evaluations of the refinement.

    MMREG_DATA=/work/shared/data PYTHONPATH=<checkout>/MultimodalRegistration OMP_NUM_THREADS=1 \
        python3 benchmarks/results/e2e_v9/profile/profile_search.py
"""
import time
from dataclasses import replace

from MultimodalRegistrationLab import evaluate_real, simulate
from MultimodalRegistrationLib import metrics
from MultimodalRegistrationLib.registration import refine, search_cr

CASES = [("stroke", "paper", 61001), ("TCGA-FG-6692", "large", 61002), ("TCGA-DU-7294", "paper", 61003),
         ("stroke", "large", 61004)]
evals = []
_cr = refine.cr_and_jacobian


def counted(*a, **k):
    evals[-1] += 1
    return _cr(*a, **k)


refine.cr_and_jacobian = counted
_reg = search_cr.register_search_ncc
calls = []


def logged(moving, fixed, **kw):
    evals.append(0)
    r = _reg(moving, fixed, **kw)
    calls.append((kw["params"].init, r.details["seconds"].get("search"), evals[-1]))
    return r


search_cr.register_search_ncc = logged
for source, regime, seed in CASES:
    rot, shift = evaluate_real.REGIMES[regime]
    sp = replace(simulate.PRESETS["bench"], header_rot_deg=rot, header_shift_mm=shift)
    case = simulate.simulate_case(simulate.load_brats_source(source), seed=seed, params=sp)
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    calls.clear()
    t = time.perf_counter()
    res = search_cr.register_search_cr(case.coronal_cet1, case.axial_t2, seed=0)
    total = time.perf_counter() - t
    tre = metrics.tre(res.moving_to_fixed, case.moving_to_fixed, pts)["mean"]
    print(f"{source}/{regime}/{seed}: total {total:.2f} s, TRE {tre:.3f} mm, success {res.success}")
    for name, (init, search_s, n) in zip(("forward", "backward") * 3, calls):
        print(f"   {name:8s} init {init:6s} search {'-' if search_s is None else f'{search_s:.3f} s':>8s}  "
              f"LM evaluations {n}")
