import json, sys, numpy as np
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f)]
def grp(r): return "MET" if r["source"] == "BraTS-MET-00110" else "exact"
for g in ("exact", "MET"):
    rs = [r for r in rows if grp(r) == g]
    ok = [r["tre"] < 2 for r in rs]; fl = [bool(r["flag"]) for r in rs]
    print(g, len(rs), "success", sum(ok), "agree", sum(a == b for a, b in zip(ok, fl)), "median TRE %.2f" % np.median([r["tre"] for r in rs]), "cpu med %.2f" % np.median([r["cpu"] for r in rs]))
    for r in rs:
        if (r["tre"] < 2) != bool(r["flag"]) or r["tre"] > 2:
            v = r["vote"]; po = r["polish"]
            print("   ", r["source"], r["regime"], r["seed"], "TRE %.2f flag %s cons %.2f p1 %.2f passes %d" % (r["tre"], r["flag"], r["cons"], r["pass1_mm"], r["passes"]), "| vote", v.get("confirmed"), v.get("chosen"), "| note", (v.get("note") or "")[:40], "| pol", po.get("chosen"), po.get("directions_after_polish_mm"), po.get("moved_mm"))
            for c in v.get("candidates", []):
                print("        %-30s %6.2f mm  nmi %s  tre %.2f" % (c["estimate"], c["mm_from_result"], "%.4f" % c["nmi"] if "nmi" in c else "-", c["tre"]))
