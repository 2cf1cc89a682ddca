#!/usr/bin/env bash
# The registration benchmark exactly as run for docs/REGISTRATION.md and the README (2 CPU cores).
# Requires: pip install itk-elastix antspyx  (benchmark only) and ../shared/data.
# `python -m MultimodalRegistrationLab.evaluate ARGS` == `mmreg evaluate ARGS`.
# Defaults: 50 cases, preset "bench", every 2nd case with header offsets up to 15 deg / 30 mm, seeds 1000+i.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=MultimodalRegistration OMP_NUM_THREADS=1
OUT=${OUT:-/work/bench_runs}
EV="python -m MultimodalRegistrationLab.evaluate"

# 1. Speed and accuracy head-to-head in ONE run: ours and elastix alternate case by case in one
#    process, one thread each, on the same 50 cases (the timing comparison of the README).
$EV --cases 50 --methods ours,elastix --threads 1 --out $OUT/s9_h2h_1thread
#    ... and the same on 2 threads per method (nothing else running)
$EV --cases 50 --methods ours,elastix --threads 2 --out $OUT/s9_h2h_2threads
#    ... and with a faster (not default) configuration of ours
$EV --cases 50 --methods ours,elastix --threads 2 --out $OUT/s9_h2h_2t_fast \
    --params '{"ours": {"max_points": [4000, 8000], "search_coarse_grid_mm": 16.0, "torch_threads": 2}}'

# 2. The slower methods on the same 50 cases, in parallel processes (their times are not compared
#    with the head-to-head; --resume skips finished (case, method) rows, so a run can be continued).
$EV --cases 50 --methods mi,paper --threads 1 --params '{"paper": {"pixel_mm": 3.0}}' --out $OUT/run1_a --resume &
$EV --cases 32 --methods ants --threads 1 --out $OUT/run1_b --resume &
$EV --first 32 --cases 12 --methods ants --threads 1 --out $OUT/s8_ants_b &
$EV --first 44 --cases 6 --methods ants --threads 1 --out $OUT/s8_ants_c &
wait

# 3. One table (first row per (case, method) wins)
$EV --summarise-only --methods ours,elastix --out $OUT/s9_h2h_1thread \
    --include $OUT/run1_a/results.csv:mi,paper $OUT/run1_b/results.csv:ants $OUT/s8_ants_b/results.csv:ants \
    $OUT/s8_ants_c/results.csv:ants
