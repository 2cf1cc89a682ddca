"""dev (tuning patients only): search-cr with its check's details per case, for studying the flag's rules.

    python flagdev.py OUT.jsonl SEED0 [params-json] [sources] [regimes] [per]

One row per case: the final TRE and flag, the pass-1 disagreement, the vote's candidates (distance from the
result, NMI, and each candidate's own TRE), the polish's details (and, on the re-agreement path, the TRE of
the three polished starts is not recorded: only their NMI and distances), CPU seconds."""
import sys, os, json, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "search_cr_lattice_dev"))
from case import *          # noqa: F401,F403  (make, tre, dev_cases, register, np)

out, seed0 = sys.argv[1], int(sys.argv[2])
params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
sources = sys.argv[4].split(",") if len(sys.argv) > 4 else ["BraTSorch-case", "BraTS-MET-00110", "TCGA-FG-6692", "stroke"]
regimes = sys.argv[5].split(",") if len(sys.argv) > 5 else ["paper", "large"]
per = int(sys.argv[6]) if len(sys.argv) > 6 else 8
assert "TCGA-DU-7294" not in sources, "the held-out patient is not used for tuning"
with open(out, "w") as fh:
    for name, regime, seed, case, pts in dev_cases(seed0, sources, regimes, per):
        t = time.perf_counter(); c0 = time.process_time()
        r = register(case.coronal_cet1, case.axial_t2, "search-cr", params=dict(params), seed=0)
        secs, cpu = time.perf_counter() - t, time.process_time() - c0
        c = r.details["consistency"]
        named = {"the forward estimate": np.asarray(c["forward_moving_to_fixed_ras"]),
                 "the backward estimate": np.linalg.inv(np.asarray(c["backward_fixed_to_moving_ras"]))}
        for h in c["passes"]:
            named[f"the pass-{h['pass']} forward search"] = np.asarray(h["searched_forward_ras"])
            named[f"the pass-{h['pass']} backward search"] = np.asarray(h["searched_backward_inverse_ras"])
        vote = dict(r.details.get("vote") or {})
        for row in vote.get("candidates", []):
            row["tre"] = tre(named[row["estimate"]], case, pts)
        pol = {k: v for k, v in (r.details.get("nmi_polish") or {}).items() if k != "seconds"}
        row = dict(source=name, regime=regime, seed=seed, tre=tre(r.moving_to_fixed, case, pts), flag=r.success,
                   cons=c["mm"], passes=len(c["passes"]), pass1_mm=c["passes"][0]["mm"],
                   rescued=c["passes"][0]["restarted_from_the_other"], result=r.details.get("result"),
                   vote=vote, polish=pol, fwd=tre(named["the forward estimate"], case, pts),
                   bwd=tre(named["the backward estimate"], case, pts), secs=secs, cpu=cpu,
                   seconds=r.details.get("seconds"))
        fh.write(json.dumps(row, default=float) + "\n"); fh.flush()
        print(name, regime, seed, f"TRE {row['tre']:.2f} flag {r.success} cons {row['cons']:.2f} cpu {cpu:.1f}s", flush=True)
