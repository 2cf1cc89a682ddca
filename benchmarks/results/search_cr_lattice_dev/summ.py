import json, sys, numpy as np
for f in sys.argv[1:]:
    rows=[json.loads(l) for l in open(f)]
    for grp, pick in (("tuning", lambda r: r['source'] not in ("TCGA-DU-7294","BraTS-MET-00110")), ("MET", lambda r: r['source']=="BraTS-MET-00110"), ("held", lambda r: r['source']=="TCGA-DU-7294")):
        for reg in ("paper","large"):
            rs=[r for r in rows if pick(r) and r['regime']==reg]
            if not rs: continue
            t=np.array([r['tre'] for r in rs]); ok=t<2
            fl=[r['flag'] for r in rs]
            agree=np.mean([(f is True)==o for f,o in zip(fl,ok)])
            wrongconf=sum(1 for f,o in zip(fl,ok) if f is True and not o)
            print(f"{f[-30:]:30s} {grp:6s} {reg:5s} n={len(rs)} succ {ok.mean():.0%} med {np.median(t):.2f} p95 {np.percentile(t,95):.2f} agree {agree:.0%} conf-wrong {wrongconf} time {np.median([r['secs'] for r in rs]):.2f}")
