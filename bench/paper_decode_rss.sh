#!/usr/bin/env bash
# Paper protocol vs llama-bench tg at the same depth, threads, model and flags (one session each), and
# peak RSS next to the model + mmproj bytes, for the memory options: mmap (llama.cpp's default) vs
# read (-lm none, imp-gguf's default) and an F16 vs Q8_0 KV cache. Records bench/results/paper-decode-rss-*.json.
# Usage: bash bench/paper_decode_rss.sh MODEL.gguf MMPROJ.gguf [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 mmproj=$2 runs=${3:-3}
out=bench/results
for variant in "read:--no-mmap" "mmap:--mmap" "read-kvq8:--no-mmap --kv-type q8_0"; do
  name=${variant%%:*} flags=${variant#*:}
  # shellcheck disable=SC2086
  imp-gguf bench -m "$model" --mmproj "$mmproj" -r "$runs" $flags --out "$out/paper-decode-rss-$name.json"
done
