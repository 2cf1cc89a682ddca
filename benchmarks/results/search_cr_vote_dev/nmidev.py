"""dev: search-cr on dev seeds, NMI at each candidate; python nmidev.py OUT.jsonl seed0 sources regimes per"""
from case import *
from MultimodalRegistrationLib.registration.vote import NmiScore
out, seed0 = sys.argv[1], int(sys.argv[2])
sources = sys.argv[3].split(","); regimes = sys.argv[4].split(","); per = int(sys.argv[5])
with open(out, "w") as fh:
    for name, regime, seed, case, pts in dev_cases(seed0, sources, regimes, per):
        t = time.perf_counter()
        r = register(case.coronal_cet1, case.axial_t2, "search-cr", seed=0)
        secs = time.perf_counter() - t
        t = time.perf_counter()
        sc = NmiScore(case.coronal_cet1, case.axial_t2)
        c = r.details["consistency"]
        cands = {"result": r.moving_to_fixed, "truth": case.moving_to_fixed}
        for p in c["passes"]:
            cands[f"p{p['pass']}f"] = p["searched_forward_ras"]; cands[f"p{p['pass']}b"] = p["searched_backward_inverse_ras"]
        row = dict(source=name, regime=regime, seed=seed, flag=r.success, cons=c["mm"], secs=secs,
                   passes=[(p["mm"], p["restarted_from_the_other"], p["kept_the_earlier_result"]) for p in c["passes"]],
                   tre={k: tre(v, case, pts) for k, v in cands.items()}, nmi={k: sc(v) for k, v in cands.items()},
                   nmi_secs=(time.perf_counter() - t) / len(cands), vote={k: v for k, v in r.details['vote'].items() if k != 'candidates'}, vote_secs=r.details['seconds'].get('vote'))
        fh.write(json.dumps(row, default=float) + "\n"); fh.flush()
        print(name, regime, seed, r.success, {k: (round(row['tre'][k], 2), round(row['nmi'][k], 4)) for k in cands}, row["passes"][0][:2], row["vote"]["chosen"], "%.1fs" % secs, flush=True)
