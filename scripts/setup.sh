#!/usr/bin/env bash
# Set up everything mtt-fast needs on a fresh Debian/Ubuntu machine with Python 3.10+:
# Debian's Fashion-MNIST package (the demo's data), a virtual environment in .venv,
# PyTorch, and mtt-fast itself with its compiled core (CUDA twins too when nvcc is found).
# Safe to run again: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${MTT_FAST_TORCH:-torch==2.14.1}"

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
"$PYTHON" -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
command -v g++ >/dev/null || need_apt+=(g++)
"$PYTHON" -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
  || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first: the extension is compiled against the torch in the venv (no build isolation).
.venv/bin/python -m pip install -q "$TORCH_SPEC" numpy ninja "setuptools>=77" wheel
echo "setup: building mtt-fast and its compiled core (a few minutes the first time)"
.venv/bin/python -m pip install -q --no-build-isolation -e '.[test]'
.venv/bin/mtt-fast info
