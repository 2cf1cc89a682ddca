import sys, time, json
from dataclasses import replace
import numpy as np
import torch, SimpleITK as sitk
torch.set_num_threads(1); sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
from MultimodalRegistrationLib import metrics
from MultimodalRegistrationLab import evaluate_real, simulate
from MultimodalRegistrationLib.registration import register
_src = {}
def make(source, regime, seed):
    rot, shift = evaluate_real.REGIMES[regime]
    sp = replace(simulate.PRESETS["bench"], header_rot_deg=rot, header_shift_mm=shift)
    if source not in _src: _src[source] = simulate.load_brats_source(source)
    case = simulate.simulate_case(_src[source], seed=seed, params=sp)
    pts = metrics.overlap_points(case.coronal_t2, case.axial_t2, case.moving_to_fixed)
    return case, pts
def tre(M, case, pts): return metrics.tre(np.asarray(M), case.moving_to_fixed, pts)["mean"]
def dev_cases(seed0, sources, regimes, per):
    """(source, regime, seed, case, overlap points) of the dev seeds seed0 + 1000*source + 100*regime + j."""
    for si, name in enumerate(evaluate_real.SOURCES):
        if name not in sources: continue
        for ri, regime in enumerate(("paper", "large")):
            if regime not in regimes: continue
            for j in range(per):
                seed = seed0 + 1000 * si + 100 * ri + j
                yield (name, regime, seed) + make(name, regime, seed)
