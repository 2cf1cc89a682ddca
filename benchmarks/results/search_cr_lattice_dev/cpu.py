from case import *
variants = {"base": {}, "l1": {"levels_mm":[4,2,1],"iterations":[40,30,20],"max_points":[8000,16000,32000]},
            "c16": {"search_rot_deg":30,"search_rot_step_deg":10,"search_coarse_grid_mm":16,"search_keep":4}}
variants["c16l1"] = dict(variants["c16"], **variants["l1"])
for src, seed in [("BraTSorch-case", 40001), ("stroke", 43001), ("TCGA-FG-6692", 42001)]:
    case, pts = make(src, "paper", seed)
    for name, p in variants.items():
        c0 = time.process_time()
        r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=dict(p), seed=0)
        print(src, name, "TRE %.2f cpu %.2f" % (tre(r.moving_to_fixed, case, pts), time.process_time() - c0), flush=True)
