#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine, then the tests.
# Usage: bash scripts/test.sh [pytest args]   (e.g. --no-cross to skip the ARM64 cross build)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in cmake:cmake ninja:ninja-build aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu \
            aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64:qemu-user sshd:openssh-server \
            ssh:openssh-client; do
  prog=${pair%%:*}; pkg=${pair#*:}
  command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

# torch==2.13.0 is a CPU wheel on this machine; llama-cpp-python compiles once (~10 min), then pip caches it.
python -m pip install -q -e '.[test]'

# The type checker ([tool.mypy] in pyproject.toml, pinned in the test extra): any error fails the run.
python -m mypy

# The fast lane on its own first: its guard (tests/unit/conftest.py) refuses torch only while torch is
# not yet imported, which in the full run the e2e modules do before the unit tests run.
python -m pytest -q tests/unit

# The llama.cpp tools are built once per machine into ~/.cache/imp-gguf (host ~8 min, linux-arm64 ~11 min)
# by the test fixtures themselves, and reused afterwards. llama.cpp's web UI (tests/e2e/test_webui.py) is built
# once the same way with npm (~2 min, into ~/.cache/imp-gguf/ui); Node.js >= 20.19 and npm come with the
# machine, nothing is installed here: where npm is missing those tests skip and say so.
exec python -m pytest -q -ra "$@"
