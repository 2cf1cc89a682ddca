#!/usr/bin/env bash
# The registration benchmark exactly as run for docs/REGISTRATION.md (2 shared CPU cores, so the
# methods were split over parallel single-thread processes; every row is one (case, method) run).
# Requires: pip install itk-elastix antspyx  (benchmark only) and ../shared/data.
# `python -m MultimodalRegistrationLib.evaluate ARGS` == `mmreg evaluate ARGS`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=MultimodalRegistration OMP_NUM_THREADS=1
OUT=${OUT:-/work/bench_runs}
EV="python -m MultimodalRegistrationLib.evaluate"
# defaults: 50 cases, preset "bench", every 2nd case with header offsets up to 15 deg / 30 mm, seed0 1000
$EV --cases 50 --methods ours --threads 1 --out $OUT/run3_ours &
$EV --cases 50 --methods mi,paper --threads 1 --params '{"paper": {"pixel_mm": 3.0}}' --out $OUT/run1_a &
$EV --cases 50 --methods elastix,ants --threads 1 --time-budget 4200 --out $OUT/run1_b &
$EV --first 7 --cases 43 --methods elastix --threads 1 --out $OUT/run4_elastix &
$EV --first 30 --cases 20 --methods ants --threads 1 --time-budget 500 --out $OUT/run5_ants &
wait
# one table from the four result files (first row per (case, method) wins)
$EV --summarise-only --methods ours --out $OUT/run3_ours \
    --include $OUT/run1_a/results.csv:mi,paper $OUT/run1_b/results.csv:elastix,ants $OUT/run4_elastix/results.csv:elastix $OUT/run5_ants/results.csv:ants
# head-to-head in one process on 2 threads
$EV --cases 6 --seed0 2000 --methods ours,elastix --threads 2 --out $OUT/run7_h2h
