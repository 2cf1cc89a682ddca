import json, sys, numpy as np
a={(r['seed']):r for r in map(json.loads, open(sys.argv[1]))}
for f in sys.argv[2:]:
    b={(r['seed']):r for r in map(json.loads, open(f))}
    ks=[k for k in a if k in b]
    d=np.array([(b[k]['tre']-a[k]['tre'], b[k]['cpu']/a[k]['cpu']) for k in ks])
    flips=[(k, a[k]['tre'], b[k]['tre'], a[k]['flag'], b[k]['flag']) for k in ks if a[k]['flag']!=b[k]['flag'] or (a[k]['tre']<2)!=(b[k]['tre']<2)]
    print(f, len(ks), "median dTRE %.4f mean dTRE %.4f max|d| %.3f  cpu ratio median %.3f total %.3f" % (np.median(d[:,0]), d[:,0].mean(), np.abs(d[:,0]).max(), np.median(d[:,1]), sum(b[k]['cpu'] for k in ks)/sum(a[k]['cpu'] for k in ks)), "flips", flips)
