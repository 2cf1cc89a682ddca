# usage: ab.sh OUT reps  -- alternates base (/tmp/wt_base) and new (/work/main)
out=$1; reps=${2:-1}; : > $out
for r in $(seq $reps); do for c in $(ls /tmp/e2e_base/cases); do
  for tree in /tmp/wt_base /work/main; do
    echo -n "$tree " >> $out
    OMP_NUM_THREADS=2 PYTHONPATH=$tree/MultimodalRegistration python3 "$(dirname "$0")"/one_cold.py $c >> $out
  done; done; done
