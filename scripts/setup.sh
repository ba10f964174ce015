#!/usr/bin/env bash
# Set up medpt in ./.venv (Python 3.10+). torch is installed first: the CPU wheel (torch==2.13.0) unless the
# environment already has a torch (a GPU user's CUDA build is kept), or MEDPT_TORCH names another requirement.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    plus the test and lint tools
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
echo "medpt is set up in $(pwd)/.venv"
