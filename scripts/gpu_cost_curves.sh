#!/usr/bin/env bash
# Issue 18 item 4: the cost curves (benchmarks/bench_cost_curves.py) on one GPU, as one prepared command that
# fits what is left of a 15-minute device lease after the machine's start (about 3-4 minutes):
#
#   bash scripts/gpu_cost_curves.sh                  # on the device, from the repository root; results in $OUT
#   bash scripts/gpu_cost_curves.sh --print-command  # only print the benchmark's arguments (the tests parse them)
#
# What it runs: SODTrainer, TRL GRPOTrainer (+ one no-grad teacher forward) and TRL DistillationTrainer, one
# child process per trainer and point, on identical pre-built 4-turn tool trajectories (no generation), with a
# Qwen3-0.6B-shaped student and a Qwen3-4B-shaped teacher (random weights, vocab 151,936) built in bf16 directly
# on the GPU, gradient checkpointing on, group 2, 2 measured steps per trainer; lengths 1k, 16k, then 8k tokens per
# trajectory; the distillation trainer at 8k only (last: its target is from 8k on). Times are synchronized wall seconds, peak memory is
# torch.cuda.max_memory_allocated over the measured steps minus what was allocated before them.
# Not in this run: generation (HF generate), the turns and group axes, ZeRO-3 (see docs/performance.md §8.2).
#
# Time guards: no child starts after SOD_COST_BUDGET_S (120) seconds of the benchmark, each child is killed after
# SOD_COST_CHILD_TIMEOUT_S (60) seconds (reported as an error), and the whole benchmark after
# SOD_COST_TOTAL_S (190) seconds; with the offline install, about 3.5 minutes at worst. The JSON is rewritten
# after every point, so what was measured comes back even if the device's limit cuts the run.
# Device call: command "bash scripts/gpu_cost_curves.sh", carry [".carry/wheels"], timeout_s 300.
#
# Packages: the GPU image has torch, transformers, accelerate, peft, matplotlib but not trl, datasets or
# math-verify. They are installed offline from .carry/wheels (git-ignored, ~5 MB), made beforehand in the checkout
# that calls the device, on a machine that reaches PyPI, with `bash scripts/gpu_cost_curves.sh --download-wheels`
# (or gpu_smoke.sh's, which adds deepspeed); the device call then names `.carry/wheels` in its `carry` list. This checkout is used through PYTHONPATH=src (nothing to build).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-/tmp/sod-gpu-cost}"
BUDGET_S="${SOD_COST_BUDGET_S:-120}"
CHILD_TIMEOUT_S="${SOD_COST_CHILD_TIMEOUT_S:-60}"
TOTAL_S="${SOD_COST_TOTAL_S:-190}"
RESULT=bench_cost_curves_gpu
DEVICE="${SOD_COST_DEVICE:-cuda}"
# a CPU dry run of this whole script (what tests/test_bench_cost.py does): SOD_COST_DEVICE=cpu SOD_COST_SHAPE=narrow
# SOD_COST_LENGTHS=128 SOD_COST_SKIP=trl_distillation:128 SOD_COST_EXTRA=--quick SOD_COST_SKIP_INSTALL=1 PYTHON=...
BENCH=(benchmarks/bench_cost_curves.py --device "$DEVICE" --dtype bfloat16 --shape "${SOD_COST_SHAPE:-qwen3-0.6b}"
       --gradient-checkpointing --axes length --lengths "${SOD_COST_LENGTHS:-1024,16384,8192}" --repeats 2
       --skip ${SOD_COST_SKIP:-trl_distillation:1024 trl_distillation:16384} --child-timeout "$CHILD_TIMEOUT_S" --budget-s "$BUDGET_S"
       --out "$RESULT" --plot "$OUT_DIR/cost_curves_gpu.png" ${SOD_COST_EXTRA:-})
if [ "${1:-}" = "--download-wheels" ]; then  # here, on a machine that reaches PyPI (no deepspeed: not needed)
    mkdir -p .carry/wheels
    "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .carry/wheels trl==1.16.0 datasets==4.8.4 fsspec==2026.2.0 dill==0.4.1 multiprocess==0.70.19 \
        math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 hjson==3.1.0 \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing_extensions==4.16.0 || exit 1
    du -sh .carry/wheels
    exit 0
fi
if [ "${1:-}" = "--print-command" ]; then
    printf '%s\n' "${BENCH[@]}"
    exit 0
fi

mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_cost_curves.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SOD_BENCH_RESULTS_DIR="$OUT_DIR"  # the JSON (rewritten after every point) goes straight to $OUT
PY="${PYTHON:-python3}"
WHEELS=.carry/wheels
START=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "WARNING: nvidia-smi failed"

# ---------------------------------------------------------------- install (offline, as scripts/gpu_smoke.sh)
if [ "${SOD_COST_SKIP_INSTALL:-0}" = 1 ]; then
    echo "install skipped (SOD_COST_SKIP_INSTALL=1)"
elif [ -d "$WHEELS" ]; then
    if ! "$PY" -m pip install -q --no-index --find-links "$WHEELS" trl datasets math-verify; then
        echo "WARNING: resolving the carried wheels against the installed packages failed; installing them --no-deps"
        "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
    fi
else
    echo "WARNING: no $WHEELS (make it with: bash scripts/gpu_smoke.sh --download-wheels; carry .carry/wheels)"
fi
"$PY" - "$DEVICE" <<'PYEOF' || { echo "FATAL: torch with CUDA, sod_trainer, trl or datasets missing"; exit 2; }
import sys, torch, transformers, trl, datasets, sod_trainer
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers",
      transformers.__version__, "trl", trl.__version__, "datasets", datasets.__version__, "sod_trainer",
      sod_trainer.__version__, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
assert torch.cuda.is_available() or sys.argv[1] == "cpu", "no CUDA device"
PYEOF
echo "install and checks: $(( $(date +%s) - START )) s"

# ---------------------------------------------------------------- the curves
timeout --signal=TERM --kill-after=10 "$TOTAL_S" "$PY" "${BENCH[@]}"
CODE=$?
echo "benchmark exit $CODE after $(( $(date +%s) - START )) s in all"
ls -l "$OUT_DIR"
exit $CODE
