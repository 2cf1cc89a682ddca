"""dev: search-cr with details on the dev seeds; python devrun.py OUT.jsonl seed0 [params-json] [sources]"""
from case import *
out, seed0 = sys.argv[1], int(sys.argv[2])
params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
sources = sys.argv[4].split(",") if len(sys.argv) > 4 else list(evaluate_real.SOURCES)
method = params.pop("_method", "search-cr")
regimes = sys.argv[5].split(",") if len(sys.argv) > 5 else ["paper", "large"]
per = int(sys.argv[6]) if len(sys.argv) > 6 else 4
with open(out, "w") as fh:
    for name, regime, seed, case, pts in dev_cases(seed0, sources, regimes, per):
        t = time.perf_counter(); c0 = time.process_time()
        r = register(case.coronal_cet1, case.axial_t2, method, params=dict(params), seed=0)
        secs = time.perf_counter() - t; cpu = time.process_time() - c0
        c = r.details.get("consistency") or {}
        row = dict(source=name, regime=regime, seed=seed, tre=tre(r.moving_to_fixed, case, pts), flag=r.success,
                   secs=secs, metric=r.metric, cons=c.get("mm"), passes=c.get("passes"),
                   fwd=tre(c["forward_moving_to_fixed_ras"], case, pts) if c else None,
                   bwd=tre(np.linalg.inv(c["backward_fixed_to_moving_ras"]), case, pts) if c else None,
                   bmetric=c.get("backward_metric"), seconds=r.details.get("seconds"),
                   hdr=tre(np.eye(4), case, pts), cpu=cpu)
        fh.write(json.dumps(row, default=float) + "\n"); fh.flush()
        print(name, regime, seed, f"TRE {row['tre']:.2f} flag {r.success} cons {row['cons']} {secs:.1f}s", flush=True)
