"""`import sod_trainer` is light: no vllm, deepspeed or transformers import, under 2 s."""

from __future__ import annotations

import subprocess
import sys
import time


def test_import_is_fast_and_does_not_pull_heavy_extras():
    code = ("import sys, time; t = time.perf_counter(); import sod_trainer; "
            "print(time.perf_counter() - t); print(sorted(m for m in ('vllm', 'deepspeed', 'torch', 'transformers') "
            "if m in sys.modules))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert float(out[0]) < 2.0
    assert out[1] == "[]"
    assert time.perf_counter() - start < 10


def test_public_api_resolves_lazily():
    import sod_trainer

    for name in ("SODTrainer", "SODConfig", "ToolEnvironment", "StepSegmenter", "token_weights"):
        assert getattr(sod_trainer, name) is not None
