import sys, json, numpy as np
from dataclasses import replace
from MultimodalRegistrationLab import simulate
out = sys.argv[1]; n = int(sys.argv[2]); rot=float(sys.argv[3]); shift=float(sys.argv[4]); seed0=int(sys.argv[5])
srcs = sys.argv[6].split(",")
for si, name in enumerate(srcs):
    src = simulate.load_brats_source(name)
    for j in range(n):
        seed = seed0 + 100*si + j
        p = replace(simulate.PRESETS["bench"], header_rot_deg=rot, header_shift_mm=shift)
        case = simulate.simulate_case(src, seed=seed, params=p)
        simulate.save_case(case, f"{out}/{name}_{seed}")
        print(name, seed, case.meta["header_offset_rotation_deg"], case.meta["header_offset_translation_mm"], flush=True)
