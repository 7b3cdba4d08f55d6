#!/usr/bin/env bash
# One-step set-up used by the README quickstart and CI: a virtual environment in .venv with
# sod-trainer and its test/plot/docs extras, and bubblewrap for the tool sandbox. PyTorch is installed
# first, pinned, so that pip takes the build available for this machine (a CPU wheel where one is
# provided locally) before the package's own requirement ("torch>=2.4") could pull a multi-GB CUDA build.
# Each step prints a line when it starts; the PyTorch and package downloads take a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
say() { echo "[setup +$(( $(date +%s) - START ))s] $*"; }
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_SPEC=${SOD_TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  say "1/5 creating the virtual environment .venv with $PYTHON"
  "$PYTHON" -m venv .venv
else
  say "1/5 using the existing virtual environment .venv"
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if .venv/bin/python -c "import torch" 2>/dev/null; then
  say "2/5 PyTorch is already installed ($(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
else
  say "2/5 installing PyTorch ($TORCH_SPEC; a large download, a few minutes)"
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
say "3/5 installing sod-trainer (editable) with its tests, plots and docs extras"
.venv/bin/python -m pip install -q -e ".[tests,plots,docs]"
# bubblewrap gives the tool sandbox its namespaces (without it the sandbox falls back to rlimits, with a warning);
# libseccomp2 its syscall filter (loaded by pyseccomp)
if command -v bwrap >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; then
  say "4/5 bubblewrap ($(command -v bwrap)) and libseccomp2 are installed: the tool sandbox uses namespaces"
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  say "4/5 installing bubblewrap and libseccomp2 with apt-get (the tool sandbox's namespaces and syscall filter)"
  (apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2) >/dev/null 2>&1 \
    || say "note: could not install bubblewrap/libseccomp2"
else
  say "4/5 bubblewrap or libseccomp2 is missing and cannot be installed here (needs root and apt-get): the tool" \
      "sandbox falls back to rlimits with a warning. Install them with your package manager" \
      "(e.g. sudo apt-get install bubblewrap libseccomp2)."
fi
# headless Chromium loads the trajectory viewer's pages in its tests and benchmark (skipped without it)
if command -v chromium >/dev/null 2>&1; then
  say "5/5 chromium is installed (the trajectory viewer's tests use it)"
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  say "5/5 installing chromium with apt-get (the trajectory viewer's tests; a large download)"
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || say "note: could not install chromium"
else
  say "5/5 chromium is missing: the trajectory viewer's browser tests will be skipped"
fi
say "done: sod-trainer is set up in .venv ($(.venv/bin/python -c 'import sod_trainer, torch; print("sod_trainer", sod_trainer.__version__, "torch", torch.__version__)'))"
