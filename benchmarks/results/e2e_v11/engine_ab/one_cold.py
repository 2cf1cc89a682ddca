import sys, time, json
import torch, scipy.ndimage, scipy.fft
from MultimodalRegistrationLib.volume import load_volume
from MultimodalRegistrationLib.registration import register
import MultimodalRegistrationLib.registration.search_cr
d = "/tmp/e2e_base/cases/" + sys.argv[1]
cor = load_volume(d + "/coronal_ceT1.nii.gz"); ax = load_volume(d + "/axial_T2.nii.gz")
t = time.perf_counter(); r = register(cor, ax, "search-cr", seed=0); w = time.perf_counter() - t
print(json.dumps({"case": sys.argv[1], "wall": round(w, 4), "total": r.details["seconds"]["total"], "M": [round(x, 6) for x in r.moving_to_fixed.ravel()[:12]]}))
