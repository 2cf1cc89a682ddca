import json, sys, numpy as np
def load(fs): return {(r["source"],r["regime"],r["seed"]):r for f in fs for l in open(f) for r in [json.loads(l)]}
a=load(sys.argv[1].split(",")); b=load(sys.argv[2].split(","))
ks=sorted(set(a)&set(b))
for name,rs in (("A",a),("B",b)):
    ex=[k for k in ks if k[0]!="BraTS-MET-00110"]
    ok=[rs[k]["tre"]<2 for k in ex]; fl=[bool(rs[k]["flag"]) for k in ex]
    print(name, "exact", len(ex), "success", sum(ok), "agree", sum(x==y for x,y in zip(ok,fl)), "confidently wrong", sum((not x) and y for x,y in zip(ok,fl)), "median TRE %.3f p95 %.3f"%(np.median([rs[k]["tre"] for k in ex]), np.percentile([rs[k]["tre"] for k in ex],95)), "cpu total %.1f"%sum(rs[k]["cpu"] for k in ks))
    for rg in ("paper","large"):
        e=[k for k in ex if k[1]==rg]; print("   ",rg, sum(rs[k]["tre"]<2 for k in e),"/",len(e), "agree", sum((rs[k]["tre"]<2)==bool(rs[k]["flag"]) for k in e), "median %.3f"%np.median([rs[k]["tre"] for k in e]))
    met=[k for k in ks if k[0]=="BraTS-MET-00110"]
    print("   MET", sum(rs[k]["tre"]<2 for k in met), "/", len(met), "agree", sum((rs[k]["tre"]<2)==bool(rs[k]["flag"]) for k in met))
d=np.array([b[k]["tre"]-a[k]["tre"] for k in ks]); cr=np.array([b[k]["cpu"]/a[k]["cpu"] for k in ks])
print("TRE B-A median %.3f max %.3f min %.3f; cpu ratio median %.2f total %.2f"%(np.median(d),d.max(),d.min(),np.median(cr),sum(b[k]["cpu"] for k in ks)/sum(a[k]["cpu"] for k in ks)))
for k in ks:
    if abs(b[k]["tre"]-a[k]["tre"])>0.25 or b[k]["flag"]!=a[k]["flag"] or max(a[k]["tre"],b[k]["tre"])>2: print("  ",k, "%.2f->%.2f"%(a[k]["tre"],b[k]["tre"]), a[k]["flag"],b[k]["flag"], "passes",a[k]["passes"], b[k]["passes"], a[k]["rescued"], b[k]["rescued"])
