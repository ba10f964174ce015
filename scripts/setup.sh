#!/usr/bin/env bash
# Set up medpt in ./.venv (Python 3.10+). torch is installed first: the CPU wheel (torch==2.13.0) unless the
# environment already has a torch (a GPU user's CUDA build is kept), or MEDPT_TORCH names another requirement.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    plus the test and lint tools, llama.cpp (llama-cpp-python, for the GGUF round-trip
#                             tests) and, as root on Debian/Ubuntu, the Chromium browser (for the page test)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "${MEDPT_TORCH:-torch==2.13.0}"
fi
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
"${pip[@]}" -e ".${extras}"
if [ "${1:-}" = "--dev" ]; then
  # llama-cpp-python has no Linux wheel on PyPI: pip builds it from source (cmake and a C++ compiler; about 8 minutes
  # on 2 cores). It is built once into a wheel folder and installed from there afterwards (seconds). Without it the
  # GGUF round-trip tests skip with the reason; MEDPT_LLAMACPP=0 skips the build.
  wheels=${MEDPT_WHEELS:-$HOME/.cache/medpt-wheels}
  if [ "${MEDPT_LLAMACPP:-1}" != 0 ] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      echo "building llama-cpp-python once into $wheels (about 8 minutes on 2 cores)"
      .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$wheels" \
        "llama-cpp-python>=0.3.36" || echo "llama-cpp-python did not build: the GGUF round-trip tests will skip"
    fi
    "${pip[@]}" --find-links "$wheels" "llama-cpp-python>=0.3.36" \
      || echo "llama-cpp-python is not installed: the GGUF round-trip tests will skip"
  fi
  # The page test drives the system's Chromium (playwright never downloads a browser here); pip cannot install it.
  if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the browser test (about a minute)"
    # bounded: a machine without a reachable package mirror must not stall the setup
    { timeout 120 apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq chromium fonts-wqy-zenhei; } \
      >/dev/null 2>&1 || echo "chromium is not installed: the browser test will skip"
  fi
fi
echo "medpt is set up in $(pwd)/.venv"
