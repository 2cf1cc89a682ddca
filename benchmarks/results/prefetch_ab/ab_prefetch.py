"""A/B: mmreg register on the bundled sample case, with and without the torch import prefetch, alternating."""
import subprocess, sys, time, json, statistics, os
S = "/work/main/MultimodalRegistration/Resources/SampleData/"
args = ["register", "--coronal", S + "sample_coronal_ceT1.nii.gz", "--axial", S + "sample_axial_T2.nii.gz",
        "--coronal-labels", S + "sample_coronal_labels.nii.gz", "--axial-labels", S + "sample_axial_labels.nii.gz",
        "--progress", "none"]
code = {"prefetch": "import os,sys; from MultimodalRegistrationLib import cli; cli._prefetch_imports(); c=cli.main(sys.argv[1:]); sys.stdout.flush(); os._exit(c)",
        "none": "import os,sys; from MultimodalRegistrationLib import cli; c=cli.main(sys.argv[1:]); sys.stdout.flush(); os._exit(c)"}
env = dict(os.environ, OMP_NUM_THREADS="2")
res = {k: [] for k in code}
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for k in (("prefetch", "none") if i % 2 == 0 else ("none", "prefetch")):
        out = f"/tmp/ab_{k}"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code[k]] + args + ["--out", out], check=True, env=env, capture_output=True)
        w = time.perf_counter() - t
        rep = json.load(open(out + "/report.json"))
        res[k].append(w)
        print(k, round(w, 2), rep["timings_s"], flush=True)
for k, v in res.items():
    print(k, "median %.2f" % statistics.median(v), [round(x, 2) for x in v])
