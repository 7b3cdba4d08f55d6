"""Benchmark 3: peak memory of the sampled-token log-probs at Qwen3's vocabulary (151,936).

Compares, for N scored tokens (8 rows of N/8 completion tokens):
  naive     sod_trainer.logprobs.naive_sampled_token_logprobs: full logits + full log_softmax
  chunked   sod_trainer.logprobs.sampled_token_logprobs (the library's path, chunk_size=1024: for a plain
            linear head a custom autograd function that recomputes only the logits in backward)
  ckpt      the same with the custom function turned off: every chunk through torch.utils.checkpoint (the
            library's path for soft-capped, PEFT-wrapped or ZeRO-3-sharded heads)
in two modes: ``score`` (no grad: the teacher pass, and the two-pass path's π_old pass, which asks for the
entropy: ``chunked+entropy``) and ``train`` (forward + backward of the log-probs; the on-policy loss pass asks
for the entropy too: ``train chunked+entropy``).

The "seconds" column is one wall-clock run per point (context only); speed is compared separately, chunked vs
checkpointed interleaved in one process on CPU time (1024 tokens, 3-5 rounds). Each memory measurement runs
in a fresh subprocess: the extra peak RSS is ``ru_maxrss`` after the call minus the
RSS just before it (model, inputs and a warm-up on 8 tokens already resident), cross-checked by a 0.5 ms
RSS sampler. The model is a one-layer Qwen3 with tied embeddings, vocab 151,936 and hidden 256: the hidden
size only changes compute time, not the vocabulary-sized buffers measured here.

The naive path needs ~3 x N x 151,936 x 4 bytes (15 GB at N = 8k without grad, more with), more than this
shared machine can spare, so it is measured at N <= 1k-4k and extrapolated linearly to the chunked
measurement's N (its peak is affine in N; the fit's residual is reported). The chunked paths are measured
at 8k (and at 2k in train mode without --quick, to show that their peak does not grow with N).

    python benchmarks/bench_logprob_memory.py --quick   # about 4-5 minutes
    python benchmarks/bench_logprob_memory.py           # about 8 minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import torch  # noqa: E402

VOCAB = 151_936
HIDDEN = 256
ROWS = 8
TARGET = 0.25


def child(variant: str, mode: str, tokens: int) -> dict:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sod_trainer.logprobs import naive_sampled_token_logprobs, sampled_token_logprobs

    if variant.startswith("ckpt"):
        checkpoint_every_chunk()
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    model = Qwen3ForCausalLM(config)
    model.train(mode == "train")
    completion = tokens // ROWS

    def inputs(length):
        ids = torch.randint(0, VOCAB, (ROWS, length + 1))
        return ids, torch.ones_like(ids), torch.ones(ROWS, dtype=torch.long), torch.ones(ROWS, length,
                                                                                         dtype=torch.bool)

    def call(ids, attention, start, mask):
        if variant == "naive":
            return naive_sampled_token_logprobs(model, ids, attention, start, mask.shape[1])
        logps, _ = sampled_token_logprobs(model, ids, attention, start, mask, chunk_size=1024,
                            with_entropy=variant.endswith("+entropy"))
        return logps

    def run(batch):
        if mode == "train":
            logps = call(*batch)
            logps.sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                call(*batch)

    run(inputs(1))  # warm-up: lazy initialisation, autograd state
    batch = inputs(completion)
    return {"variant": variant, "mode": mode, "tokens": tokens, **C.measure_call(run, batch),
            "full_logits_fp32_mib": C.mib(tokens * VOCAB * 4)}


def checkpoint_every_chunk(enabled: bool = True) -> None:
    """Route every chunk through ``torch.utils.checkpoint`` (the library's fallback path) instead of the
    custom autograd function."""
    import sod_trainer.logprobs as logprobs

    original = getattr(logprobs, "_original_plain_linear_head", logprobs._plain_linear_head)
    logprobs._original_plain_linear_head = original
    logprobs._plain_linear_head = (lambda head, softcap: False) if enabled else original


def timing(tokens: int, rounds: int) -> dict:
    """CPU time of forward + backward of the log-probs (the loss's pass): the custom autograd function vs
    every chunk checkpointed, interleaved in this process. (Without grad both run the same code.)"""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sod_trainer.logprobs import sampled_token_logprobs

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    model = Qwen3ForCausalLM(config)
    length = tokens // ROWS
    ids = torch.randint(0, VOCAB, (ROWS, length + 1))
    batch = (ids, torch.ones_like(ids), torch.ones(ROWS, dtype=torch.long), torch.ones(ROWS, length, dtype=torch.bool))

    def variant(checkpointed: bool):
        def run():
            checkpoint_every_chunk(checkpointed)
            start = time.process_time()
            logps, _ = sampled_token_logprobs(model, *batch, chunk_size=1024)
            logps.sum().backward()
            model.zero_grad(set_to_none=True)
            elapsed = time.process_time() - start
            checkpoint_every_chunk(False)
            return elapsed
        return run

    times = C.interleave({"chunked": variant(False), "ckpt": variant(True)}, rounds, log=None)
    out = {"train": {"cpu_s": times, "chunked_over_ckpt": C.paired_ratios(times["chunked"], times["ckpt"])}}
    print(f"  timing train N={tokens}: custom function {statistics.median(times['chunked']):.2f} s, checkpointed "
          f"{statistics.median(times['ckpt']):.2f} s CPU, ratio "
          f"{out['train']['chunked_over_ckpt']['median_of_paired_ratios']:.2f}")
    return out


def measure(variant: str, mode: str, tokens: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", variant, mode, str(tokens)], capture_output=True,
                            text=True, timeout=1800)
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{variant} {mode} {tokens} failed:\n{result.stderr[-3000:]}")
    out = json.loads(lines[-1][7:])
    print(f"  {mode:5s} {variant:16s} N={tokens:5d}: extra peak {out['extra_peak_mib']:8.0f} MiB "
          f"(sampler {out['sampled_extra_peak_mib']:8.0f}), {out['seconds']:.1f} s")
    return out


def fit(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares line y = a + b x; returns a, b and the largest relative residual."""
    n = len(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0
    a = my - b * mx
    residual = max(abs(a + b * x - y) / y for x, y in points) if n > 2 else float("nan")
    return a, b, residual


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        variant, mode, tokens = options.child
        print("RESULT " + json.dumps(child(variant, mode, int(tokens))))
        return
    started = time.time()
    target_tokens = 8192
    naive_tokens = {"score": [512, 1024, 2048] if options.quick else [1024, 2048, 3072, 4096],
                    "train": [512, 1024] if options.quick else [512, 1024, 2048]}
    measurements = []
    for mode in ("score", "train"):
        # train+entropy: the on-policy loss pass (π_old and the entropy metric come from it)
        chunked = (["chunked", "chunked+entropy"] if mode == "score" and not options.quick
                   else ["chunked"] if mode == "score" else ["chunked", "chunked+entropy", "ckpt"])
        chunk_tokens = [target_tokens] if options.quick or mode == "score" else [2048, target_tokens]
        for tokens in naive_tokens[mode]:
            measurements.append(measure("naive", mode, tokens))
        for tokens in chunk_tokens:
            for variant in chunked:
                measurements.append(measure(variant, mode, tokens))

    timings = timing(1024, 3 if options.quick else 5)

    rows, summary = [], {}
    for mode in ("score", "train"):
        naive = sorted((m["tokens"], m["extra_peak_mib"]) for m in measurements
                       if m["mode"] == mode and m["variant"] == "naive")
        a, b, residual = fit(naive)
        for m in measurements:
            if m["mode"] != mode or m["variant"] == "naive":
                continue
            measured = dict(naive).get(m["tokens"])
            reference = measured if measured is not None else a + b * m["tokens"]
            ratio = m["extra_peak_mib"] / reference
            key = f"{mode}/{m['variant']}/{m['tokens']}"
            summary[key] = {"chunked_mib": m["extra_peak_mib"], "naive_mib": reference,
                            "naive_extrapolated": measured is None, "ratio": ratio, "target": TARGET,
                            "meets_target": ratio <= TARGET, "chunked_seconds": m["seconds"]}
            rows.append([mode, m["variant"], m["tokens"], m["extra_peak_mib"],
                         f"{reference:.0f}{' (extrapolated)' if measured is None else ''}", f"{ratio:.3f}",
                         f"<= {TARGET}", "yes" if ratio <= TARGET else "NO", f"{m['seconds']:.1f}"])
        summary[f"{mode}/naive_fit"] = {"intercept_mib": a, "mib_per_token": b, "max_relative_residual": residual,
                                        "points": naive, "full_logits_mib_per_token": VOCAB * 4 / 2**20}
        for tokens, peak in naive:
            rows.append([mode, "naive", tokens, peak, "-", "-", "-", "-",
                         f"{next(m['seconds'] for m in measurements if m['mode'] == mode and m['variant'] == 'naive' and m['tokens'] == tokens):.1f}"])
    print()
    print(f"vocab {VOCAB}, hidden {HIDDEN}; 'extra peak' = peak RSS during the call minus RSS before it")
    print(C.table(rows, ["mode", "variant", "tokens", "extra peak MiB", "naive MiB", "ratio", "target", "ok",
                         "seconds"]))
    for mode in ("score", "train"):
        f = summary[f"{mode}/naive_fit"]
        print(f"naive {mode}: {f['mib_per_token']:.3f} MiB per token (= {f['mib_per_token'] / f['full_logits_mib_per_token']:.2f}"
              f" x one fp32 logits row), fit residual {f['max_relative_residual']:.1%}")
    C.save("bench_logprob_memory", {"vocab": VOCAB, "hidden": HIDDEN, "rows": ROWS, "measurements": measurements,
                                    "summary": summary, "cpu_timing_1024_tokens": timings,
                                    "wall_s": time.time() - started}, options.quick)


if __name__ == "__main__":
    main()
