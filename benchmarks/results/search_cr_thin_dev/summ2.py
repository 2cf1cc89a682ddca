import json, sys, statistics as st
def load(f): return [json.loads(l) for l in open(f)]
for f in sys.argv[1:]:
    rows = load(f)
    ex = [r for r in rows if r["source"] != "BraTS-MET-00110"]
    ok = sum(r["tre"] < 2 for r in ex); agree = sum((r["tre"] < 2) == bool(r["flag"]) for r in ex)
    wrong = sum(bool(r["flag"]) and r["tre"] >= 2 for r in ex)
    print(f"{f}: exact n {len(ex)} success {ok} median {st.median(r['tre'] for r in ex):.3f} agree {agree} confidently-wrong {wrong} median s {st.median(r['secs'] for r in rows):.2f} (all {len(rows)})")
