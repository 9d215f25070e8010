#!/usr/bin/env bash
# Parity of full-size published forms (random weights, real config, shapes and image size) at F16:
# `imp-gguf verify` against the PyTorch reference. Not run in CI: ~13 GB of RAM and ~25 GB of disk
# per variant. Records bench/results/verify-published-<variant>.json.
# Usage: bash bench/verify_published.sh [WORKDIR] [VARIANT...]   (default: Imp-v1.5-3B-196 imp-v1-3b)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/imp-gguf-verify-published}
shift || true
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(Imp-v1.5-3B-196 imp-v1-3b)
mkdir -p "$work" bench/results
for v in "${variants[@]}"; do
  ckpt="$work/$v"
  out="$work/$v-gguf"
  [ -d "$ckpt" ] || imp-gguf fixtures published "$v" "$ckpt" --data random
  rm -rf "$out"
  imp-gguf convert "$ckpt" -o "$out" --outtype f16 --model-name "$v" -q
  mmproj=$(ls "$out"/mmproj-*-F16.gguf)
  model=$(ls "$out"/*-F16.gguf | grep -v '/mmproj-')
  start=$(date +%s)
  set +e
  imp-gguf verify "$ckpt" "$model" "$mmproj" --json > "$work/$v.json"
  rc=$?
  set -e
  python - "$work/$v.json" "bench/results/verify-published-$v.json" "$v" "$rc" "$start" <<'EOF'
import json, os, sys, time
src, dst, variant, rc, start = sys.argv[1:]
report = json.load(open(src))
report.update({"variant_name": variant, "exit_code": int(rc), "seconds": int(time.time()) - int(start),
               "data": "random (seeded, scaled 1/sqrt(fan_in))", "outtype": "f16",
               "load_average": os.getloadavg(), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
for k in ("checkpoint", "model", "mmproj"):
    report[k] = os.path.basename(report[k])
json.dump(report, open(dst, "w"), indent=2)
print(json.dumps(report, indent=2))
EOF
  rm -rf "$out"
done
