#!/bin/bash
# A/B: PyTorch's THP allocation (THP_MEM_ALLOC_ENABLE=1) vs default, separate processes, interleaved
cd "$(dirname "$0")/.."
for r in 1 2 3; do
  for v in 0 1; do
    if [ $v = 1 ]; then export THP_MEM_ALLOC_ENABLE=1; else unset THP_MEM_ALLOC_ENABLE; fi
    PYTHONPATH=$PWD .venv/bin/python benchmarks/profile_step.py --paths "" --experiment-steps 10 --experiment-reps 4 --variants zzznone --out ${TMPDIR:-/tmp}/ab_thp_${v}_$r > /dev/null 2>&1
    echo "thp=$v rep=$r $(grep '^| kept\|^| adjoint' ${TMPDIR:-/tmp}/ab_thp_${v}_$r.md | awk -F'|' '{print $2 $4}' | tr '\n' ' ') $(grep -i anonhuge /proc/meminfo)"
  done
done
