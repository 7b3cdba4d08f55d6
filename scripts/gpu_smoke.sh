#!/usr/bin/env bash
# GPU smoke test for sod-trainer, one GPU, at most ~8 minutes:
#
#   bash scripts/gpu_smoke.sh          # from the repository root
#
# 1. installs what the machine lacks (trl, datasets, math-verify, deepspeed, ...) from the wheels carried in
#    .carry/wheels (no package registry needed; see docs/distributed.md for how that folder is made), then
#    this checkout (`pip install --no-index --find-links .carry/wheels -e .`);
# 2. builds a Qwen3-0.6B-shaped model from a config (vocab 151936) and teaches it the tool-call format with a
#    short SFT (student snapshot + teacher);
# 3. runs bf16 SOD training steps with real multi-turn rollouts through the sandboxed Python tool:
#    single process, then DeepSpeed ZeRO-2 and ZeRO-3 on the one GPU if deepspeed imports;
# 4. prints peak GPU memory and step times per run, and exits non-zero if any run failed.
#
# The whole log and one JSON line per phase go to $OUT (if set) or /tmp/sod-gpu-smoke.
#
# Making .carry/wheels (git-ignored; ~7 MB), on a machine that reaches PyPI, for the GPU image's Python 3.12:
#
#   bash scripts/gpu_smoke.sh --download-wheels
set -uo pipefail
set -x

if [ "${1:-}" = "--download-wheels" ]; then
    cd "$(dirname "$0")/.."
    mkdir -p .carry/wheels
    # what the GPU image lacks (it has torch, transformers, accelerate, peft, pyarrow, pandas, numpy, psutil,
    # msgpack, ninja, py-cpuinfo, einops, xxhash, aiohttp, rich, sympy, ...): pinned, no dependencies
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .carry/wheels trl==1.16.0 datasets==4.8.4 fsspec==2026.2.0 dill==0.4.1 multiprocess==0.70.19 \
        math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 hjson==3.1.0 \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing_extensions==4.16.0
    # deepspeed ships only a source archive: build its pure-Python wheel (ops are JIT-compiled on first use)
    python3 -m pip wheel --no-deps -w .carry/wheels deepspeed==0.19.8
    du -sh .carry/wheels
    exit 0
fi

OUT_DIR="${OUT:-/tmp/sod-gpu-smoke}"
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_smoke.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
MODELS="${SOD_SMOKE_MODELS:-/tmp/sod-gpu-smoke/models}"
WHEELS=.carry/wheels
FAILED=()
START=$(date +%s)

cd "$(dirname "$0")/.."
nvidia-smi || echo "WARNING: nvidia-smi failed"
"$PY" - <<'EOF'
import sys, torch, transformers, accelerate, peft
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "transformers", transformers.__version__,
      "accelerate", accelerate.__version__, "peft", peft.__version__)
EOF

# ---------------------------------------------------------------- install (offline)
# (a CPU dry run of this script: SOD_SMOKE_SKIP_INSTALL=1 SOD_SMOKE_MIXED_PRECISION=no PYTHONPATH=src SOD_SMOKE_PREPARE_ARGS="--tiny
#  --student-sft-steps 4 --teacher-sft-steps 6" SOD_SMOKE_TRAIN_ARGS="--steps 1 --batch-size 4 --max-completion 48")
if [ "${SOD_SMOKE_SKIP_INSTALL:-0}" = 1 ]; then
    echo "install skipped (SOD_SMOKE_SKIP_INSTALL=1)"
elif [ -d "$WHEELS" ]; then
    ls -la "$WHEELS"
    if ! "$PY" -m pip install --no-index --find-links "$WHEELS" trl datasets math-verify deepspeed; then
        echo "WARNING: resolving the carried wheels against the installed packages failed; installing them --no-deps"
        "$PY" -m pip install --no-index --no-deps "$WHEELS"/*.whl || FAILED+=("install-wheels")
    fi
fi
if [ "${SOD_SMOKE_SKIP_INSTALL:-0}" != 1 ] && ! "$PY" -m pip install --no-index --find-links "$WHEELS" --no-build-isolation -e .; then
    echo "WARNING: pip install -e . failed; retrying without dependencies"
    if ! "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .; then
        echo "WARNING: using the checkout through PYTHONPATH"
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
"$PY" -c "import sod_trainer, trl, datasets; print('sod_trainer', sod_trainer.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__)" \
    || { echo "FATAL: sod_trainer or its dependencies do not import"; exit 2; }
HAVE_DEEPSPEED=0
"$PY" -c "import deepspeed; print('deepspeed', deepspeed.__version__)" && HAVE_DEEPSPEED=1

run_phase() {  # name, timeout seconds, command...
    local name=$1 limit=${SOD_SMOKE_PHASE_TIMEOUT:-$2}
    shift 2
    local began=$(date +%s)
    if timeout --signal=TERM --kill-after=15 "$limit" "$@"; then
        echo "PHASE $name: ok in $(( $(date +%s) - began )) s"
    else
        local code=$?
        echo "PHASE $name: FAILED (exit $code) after $(( $(date +%s) - began )) s"
        FAILED+=("$name")
    fi
}

# ---------------------------------------------------------------- model + SFT, then SOD steps
run_phase prepare 150 "$PY" scripts/gpu_smoke.py --phase prepare --models "$MODELS" --out "$OUT_DIR/prepare.json" \
    ${SOD_SMOKE_PREPARE_ARGS:-}
if [ -f "$OUT_DIR/prepare.json" ]; then
    run_phase single 150 "$PY" scripts/gpu_smoke.py --phase train --tag single --models "$MODELS" \
        --out "$OUT_DIR/single.json" ${SOD_SMOKE_TRAIN_ARGS:-}
    if [ "$HAVE_DEEPSPEED" = 1 ]; then
        for stage in 2 3; do
            run_phase "zero$stage" 120 "$PY" -m accelerate.commands.launch --use_deepspeed --zero_stage "$stage" \
                --zero3_init_flag false --num_processes 1 --num_machines 1 --mixed_precision "${SOD_SMOKE_MIXED_PRECISION:-bf16}" --dynamo_backend no \
                scripts/gpu_smoke.py --phase train --tag "zero$stage" --models "$MODELS" --out "$OUT_DIR/zero$stage.json" \
                ${SOD_SMOKE_TRAIN_ARGS:-}
        done
    else
        echo "deepspeed does not import: ZeRO runs skipped"
        FAILED+=("deepspeed-missing")
    fi
fi

# ---------------------------------------------------------------- summary
set +x
echo "================ sod-trainer GPU smoke summary ($(( $(date +%s) - START )) s) ================"
"$PY" - "$OUT_DIR" <<'EOF'
import json, os, sys
out = sys.argv[1]
for name in ("prepare", "single", "zero2", "zero3"):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        print(f"{name:8s} no result")
        continue
    r = json.load(open(path))
    if name == "prepare":
        print(f"prepare  {r['parameters'] / 1e6:.0f} M params, SFT loss student {r['student_sft_loss']:.3f} "
              f"teacher {r['teacher_sft_loss']:.3f}, {r['seconds']:.0f} s, peak {r['peak_gpu_memory_gib']} GiB")
        continue
    times = r["step_seconds"]
    peak = r["peak_gpu_memory_gib"]
    print(f"{name:8s} {r['device']} zero={r['zero_stage']} steps={r['steps']} peak_mem={peak if peak is None else round(peak, 2)} GiB "
          f"step_s={times} losses={[round(x, 4) for x in r['losses']]} tool_calls={r['tool_calls_per_trajectory']} "
          f"steps/traj={r['steps_per_trajectory']} reward={r['rewards']}")
EOF
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "ALL OK"
