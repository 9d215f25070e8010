#!/usr/bin/env bash
# CI's first stage: the README's first command as a new user runs it, then the package as a wheel.
#   1. a new virtual environment, in a copy of this checkout, the README's first command verbatim
#      (`pip install -e . && imp-gguf demo`): it must succeed and every answer match its golden answer;
#   2. `pip wheel --no-deps` of another copy, installed into another new virtual environment, used from
#      an empty folder: `imp-gguf demo --json` (checked the same way), `run` and `inspect` on its files,
#      `bench --help`, `recipes list`'s measured columns and the probe source inside the installed package,
#      and scripts/check_base_deps.py
#      (every module imports, every --help works, commands needing the reference extra exit 2 saying so).
# No extras are installed: an import that only the test extra brings fails here, not on a user's machine.
# After the first llama-cpp-python compile (~10 min), pip's wheel cache makes both installs cheap.
# Usage: bash scripts/fresh_install_check.sh      (PYTHON=python3.X picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/imp-gguf-fresh.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PIP_USER
start=$SECONDS

fail() { echo "fresh install check FAILED: $*" >&2; exit 1; }

if ! "$py" -c 'import ensurepip' 2>/dev/null; then  # Debian's python3 needs python3-venv for venvs
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || fail "$py cannot create virtual environments (apt-get install python3-venv)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi

# The README's first command, exactly as written in its "Two commands" section.
readme_cmd=$(awk '/^## Two commands/ {s = 1} s && /^```/ {if (b) exit; b = 1; next} b && NF && !/^ *#/ {print; exit}' README.md)
[[ $readme_cmd == *"imp-gguf demo"* ]] || fail "no 'imp-gguf demo' command in the README's Two commands section (got '$readme_cmd')"

# Copies of the checkout (tracked and not-ignored files), so nothing is written into it and no stale
# build/ or egg-info of a developer's tree gets into the wheel.
copy_checkout() {
  mkdir -p "$1"
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$1"
}
copy_checkout "$work/src"
copy_checkout "$work/src-wheel"

t1=$SECONDS
echo "== fresh install 1/2: new virtual environment, the README's command: $readme_cmd"
"$py" -m venv "$work/venv-editable"
set +e
(cd "$work/src" && PATH="$work/venv-editable/bin:$PATH" VIRTUAL_ENV="$work/venv-editable" \
  bash -c "$readme_cmd") </dev/null 2>&1 | tee "$work/readme.log"
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || fail "the README's first command exited $status"
summary=$(grep -E '^[0-9]+/[0-9]+ correct through llama.cpp' "$work/readme.log" | tail -1)
[[ $summary =~ ^([0-9]+)/([0-9]+)\  ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] \
  && [ "${BASH_REMATCH[2]}" -gt 0 ] || fail "demo answers: '${summary:-no summary line}' (want all correct)"
t2=$SECONDS

echo "== fresh install 2/2: a wheel in another new virtual environment"
venv=$work/venv-wheel
"$py" -m venv "$venv"
"$venv/bin/python" -m pip wheel -q --no-deps -w "$work/wheels" "$work/src-wheel" </dev/null
wheel=$(ls "$work"/wheels/imp_gguf-*.whl)
"$venv/bin/python" -m pip install -q "$wheel" </dev/null
mkdir "$work/run" && cd "$work/run"  # an empty folder: imp_gguf can only come from the installed wheel
"$venv/bin/imp-gguf" demo --json </dev/null >demo.json || fail "imp-gguf demo (wheel) exited $?"
"$venv/bin/python" - "$venv" <<'EOF' || fail "the installed wheel"
import json, subprocess, sys
from pathlib import Path

import imp_gguf
from imp_gguf.speed.roofline import probe_source

venv = Path(sys.argv[1]).resolve()
for p in (Path(imp_gguf.__file__), probe_source()):
    assert p.resolve().is_relative_to(venv), f"{p} is not inside the wheel's environment {venv}"
r = json.loads(Path("demo.json").read_text())
assert r["answers"] and r["correct"] == len(r["answers"]), f"demo: {r['correct']}/{len(r['answers'])} right: {r}"
print(f"demo: {r['correct']}/{len(r['answers'])} correct ({r['recipe']})")
cli = [str(venv / "bin" / "imp-gguf")]
a = r["answers"][0]
out = subprocess.run([*cli, "run", "-m", r["model"], "--mmproj", r["mmproj"], "--image", a["image"],
                      "-p", a["question"], "-n", "24", "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     check=True, text=True).stdout
assert json.loads(out)["answer"] == a["answer"], f"run answered {out!r}, the demo {a['answer']!r}"
for args in (["inspect", r["model"]], ["bench", "--help"]):
    subprocess.run([*cli, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
# The measured columns of `recipes list` ship in the wheel (imp_gguf/data/measured), as in a checkout.
listing = json.loads(subprocess.run([*cli, "recipes", "list", "--json"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, check=True, text=True).stdout)["recipes"]
for col in ("kl_mean", "lm_bytes", "accuracy"):
    assert any(row["tiny_imp"][col] is not None for row in listing), f"recipes list (wheel): no {col} column"
assert any(row["decode_tps_3b"] is not None for row in listing), "recipes list (wheel): no tok/s column"
print("recipes list: measured columns present")
EOF
"$venv/bin/python" "$work/src-wheel/scripts/check_base_deps.py" </dev/null || fail "scripts/check_base_deps.py"
t3=$SECONDS

echo "fresh install check passed: README command $((t2 - t1)) s, wheel $((t3 - t2)) s, total $((SECONDS - start)) s"
