"""How long reading Greedy's two input files takes (SimpleITK, which Greedy's ITK reader resembles):
python3 read_time.py CASES_DIR (bench_e2e.py's --out folder's cases/)."""
import glob, sys, time
import numpy as np
import SimpleITK as sitk

ts = []
for d in sorted(glob.glob(sys.argv[1] + "/*/")):
    t = time.perf_counter()
    sitk.ReadImage(d + "coronal_ceT1.nii.gz")
    sitk.ReadImage(d + "axial_T2.nii.gz")
    ts.append(time.perf_counter() - t)
print(f"{len(ts)} cases: reading both inputs with SimpleITK: median {np.median(ts):.3f} s, range {min(ts):.3f}-{max(ts):.3f} s")
