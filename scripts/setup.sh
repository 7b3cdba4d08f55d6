#!/usr/bin/env bash
# One-step set-up used by the README quickstart and CI: a virtual environment in .venv with
# sod-trainer and its test/plot extras. PyTorch is installed first, pinned, so that pip takes the
# build available for this machine (a CPU wheel where one is provided locally) before the package's
# own requirement ("torch>=2.4") could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_SPEC=${SOD_TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[tests,plots,docs]"
# bubblewrap gives the tool sandbox its namespaces (without it the sandbox falls back to rlimits, with a warning);
# libseccomp2 its syscall filter (loaded by pyseccomp)
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 \
   && { ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; }; then
  (apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2) >/dev/null 2>&1 \
    || echo "note: could not install bubblewrap/libseccomp2"
fi
# headless Chromium loads the trajectory viewer's pages in its tests and benchmark (skipped without it)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "note: could not install chromium"
fi
echo "sod-trainer is set up in .venv ($(.venv/bin/python -c 'import sod_trainer, torch; print("sod_trainer", sod_trainer.__version__, "torch", torch.__version__)'))"
