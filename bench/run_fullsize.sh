#!/bin/sh
# Full-size figures on this machine: random-weight Imp-v1.5-3B-196 and imp-v1-3b checkpoints (real shapes),
# F16 conversion, q4_k / q4_0 / q3_k quantization, then `imp-gguf bench` (paper + llama-bench protocols).
# Needs ~25 GB free in $IMP_FULLSIZE_WORK (default /tmp/imp-fullsize) and the host llama.cpp build
# (`imp-gguf runtime build`). About 1 h on 2 cores. Resumable: finished steps are skipped.
# Env: IMP_FULLSIZE_RUNS (3), IMP_FULLSIZE_THREADS (all cores), IMP_FULLSIZE_RECIPES ("q4_k q4_0 q3_k").
set -eu
cd "$(dirname "$0")/.."
exec python bench/run_fullsize.py "$@"
