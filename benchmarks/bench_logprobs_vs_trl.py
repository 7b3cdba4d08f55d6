"""Our chunked log-probs (``sod_trainer.logprobs``) against TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``,
the path GRPOTrainer uses in 1.16: ``model(..., labels=..., fused_lm_head=True)`` → ``ChunkedLogProbFunction``).

Same model, same tokens: a one-layer Qwen3 with vocab 151,936 and a narrow hidden size (128), ``ROWS`` rows of
completion tokens after a one-token prompt. Both paths run the decoder once and score only the completion
tokens; they differ in how the (tokens x vocab) head is tiled: ours runs ``chunk_size`` (1024) tokens x the whole
vocabulary at a time with a custom autograd function; TRL's runs 4096 tokens x 32,768 vocabulary columns with an
online log-sum-exp (a Triton kernel on CUDA/XPU; on CPU, the machine here, its torch fallback — and that fallback
scores every position, prompt included, because it does not compact the labels).

Three modes: ``score`` (no grad: a teacher / reference pass), ``train`` (forward + backward of the log-probs),
``train+entropy`` (the same asking for the entropy, as both GRPOTrainer's and SODTrainer's loss pass do).

* Correctness: log-probs, entropies and the gradients of every parameter agree (fp32) on the same batch.
* Time: CPU time of forward and of backward, the two paths interleaved in one process (order rotated each round).
* Peak memory: one fresh subprocess per (path, mode, tokens): extra peak RSS over the resident model and inputs
  (``ru_maxrss`` after the call and a 0.5 ms RSS sampler), address space capped so that nothing can take the
  shared machine down (a point over the cap is reported as OOM).

    python benchmarks/bench_logprobs_vs_trl.py            # 8k and 16k tokens, score and train+entropy (~30 min shared)
    python benchmarks/bench_logprobs_vs_trl.py --quick    # 512 tokens, vocab 8192: a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import torch  # noqa: E402

VOCAB = 151_936
HIDDEN = 128
ROW_TOKENS = 2048
PATHS = ("sod", "trl")
MODES = ("score", "train", "train+entropy")
FULL_MODES = ("score", "train+entropy")  # what the full run measures (the loss passes of both trainers ask for the entropy)


def build_model(vocab: int, hidden: int, with_entropy: bool = True):
    """A one-layer Qwen3 (untied head, as the head is what is measured) with TRL's fused head added."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=max(2, hidden // 32), num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=32_768, tie_word_embeddings=False)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():  # a spread-out next-token distribution, like a trained model's, not a near-uniform one
        model.lm_head.weight.normal_(0, 0.5)
    # Without fused_lm_head=True the patched forward is the original one, so our path runs the same module.
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy") if with_entropy else ("log_probs",))
    return model


def make_batch(tokens: int, vocab: int, row_tokens: int, seed: int = 0):
    """``rows`` rows of one prompt token + ``row_tokens`` completion tokens (all scored)."""
    rows = max(1, tokens // row_tokens)
    length = tokens // rows
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length + 1), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "start": torch.ones(rows, dtype=torch.long),
            "mask": torch.ones(rows, length, dtype=torch.bool)}


def log_probs(path: str, model, batch: dict, with_entropy: bool):
    """``(rows, completion)`` log-probs and entropies (or None) of the completion tokens through ``path``."""
    if path == "sod":
        from sod_trainer.logprobs import sampled_token_logprobs

        return sampled_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["start"],
                                      batch["mask"], chunk_size=1024, with_entropy=with_entropy)
    labels = batch["input_ids"].clone()
    labels[:, :1] = -100  # the prompt is not scored (as GRPOTrainer's labels)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                fused_lm_head=True)
    completion = batch["mask"].shape[1]
    return out.log_probs[:, -completion:], (out.entropy[:, -completion:] if with_entropy else None)


def loss_of(logps):
    """A loss with a non-uniform gradient per token (the entropy is a metric in both trainers' loss pass)."""
    weights = torch.linspace(-1.0, 1.0, logps.numel()).view_as(logps)
    return (logps * weights).sum()


def correctness(vocab: int, tokens: int, hidden: int) -> dict:
    """Both paths on one batch: largest differences of log-probs, entropies and every parameter's gradient."""
    model = build_model(vocab, hidden)
    batch = make_batch(tokens, vocab, min(ROW_TOKENS, tokens))
    out = {}
    grads = {}
    for path in PATHS:
        model.zero_grad(set_to_none=True)
        logps, entropy = log_probs(path, model, batch, with_entropy=True)
        # SOD's entropy is a metric (detached); only the log-probs carry the loss's gradient in both
        loss_of(logps).backward()
        grads[path] = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        out[path] = (logps.detach(), entropy.detach())
    scale = max(g.abs().max().item() for g in grads["sod"].values())
    grad_diff = max((grads["sod"][n] - grads["trl"][n]).abs().max().item() for n in grads["sod"])
    result = {"tokens": tokens, "vocab": vocab,
              "max_abs_logp_difference": (out["sod"][0] - out["trl"][0]).abs().max().item(),
              "max_abs_entropy_difference": (out["sod"][1] - out["trl"][1]).abs().max().item(),
              "max_abs_grad_difference": grad_diff, "max_abs_grad": scale,
              "same_parameters_get_grads": sorted(grads["sod"]) == sorted(grads["trl"])}
    result["match"] = bool(result["max_abs_logp_difference"] <= 1e-4 and result["max_abs_entropy_difference"] <= 1e-3
                           and grad_diff <= 1e-4 * max(scale, 1.0) and result["same_parameters_get_grads"])
    return result


def timing(vocab: int, tokens: int, hidden: int, rounds: int, with_entropy: bool) -> dict:
    """CPU seconds of forward and of backward per path, interleaved in this process."""
    model = build_model(vocab, hidden, with_entropy)
    batch = make_batch(tokens, vocab, min(ROW_TOKENS, tokens))
    forward = {p: [] for p in PATHS}
    backward = {p: [] for p in PATHS}

    def variant(path):
        def run():
            start = time.process_time()
            logps, entropy = log_probs(path, model, batch, with_entropy)
            loss = loss_of(logps)
            middle = time.process_time()
            loss.backward()
            end = time.process_time()
            model.zero_grad(set_to_none=True)
            forward[path].append(middle - start)
            backward[path].append(end - middle)
            return end - start
        return run

    for path in PATHS:  # warm-up at a small size
        small = make_batch(64, vocab, 64)
        logps, _ = log_probs(path, model, small, with_entropy)
        logps.sum().backward()
        model.zero_grad(set_to_none=True)
    total = C.interleave({p: variant(p) for p in PATHS}, rounds, log=None)
    result = {"tokens": tokens, "with_entropy": with_entropy, "rounds": rounds}
    for name, series in (("forward", forward), ("backward", backward), ("total", total)):
        result[name] = {p: C.summary(series[p]) for p in PATHS}
        result[name]["sod_over_trl"] = C.paired_ratios(series["sod"], series["trl"])
    return result


def child(path: str, mode: str, tokens: int, vocab: int, hidden: int) -> dict:
    """In a fresh process: extra peak RSS of one call (after a small warm-up), and its wall time."""
    train = mode.startswith("train")
    with_entropy = mode.endswith("+entropy")
    model = build_model(vocab, hidden, with_entropy)

    def run(batch):
        if train:
            logps, entropy = log_probs(path, model, batch, with_entropy)
            loss_of(logps).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                log_probs(path, model, batch, with_entropy)

    run(make_batch(64, vocab, 64))
    batch = make_batch(tokens, vocab, min(ROW_TOKENS, tokens))
    return {"path": path, "mode": mode, "tokens": tokens, **C.measure_call(run, batch)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tokens", default=None, help="comma-separated token counts (default 8192,16384)")
    parser.add_argument("--memory-limit-gib", type=float, default=14.0)
    parser.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        path, mode, tokens, vocab, hidden = options.child
        print("RESULT " + json.dumps(child(path, mode, int(tokens), int(vocab), int(hidden))))
        return
    vocab, hidden = (8192, 64) if options.quick else (VOCAB, HIDDEN)
    sizes = [int(t) for t in options.tokens.split(",")] if options.tokens else ([512] if options.quick
                                                                                 else [8192, 16384])
    rounds = options.rounds or 2
    modes = MODES if options.quick else FULL_MODES
    started = time.time()
    load_before = C.os.getloadavg()
    check = correctness(vocab, min(sizes[0], 1024), hidden)
    print(f"correctness ({check['tokens']} tokens): logp diff {check['max_abs_logp_difference']:.2e}, entropy diff "
          f"{check['max_abs_entropy_difference']:.2e}, grad diff {check['max_abs_grad_difference']:.2e} "
          f"(max |grad| {check['max_abs_grad']:.2e}) -> {'match' if check['match'] else 'MISMATCH'}")
    times, memory = [], []
    for tokens in sizes:
        for with_entropy in sorted({m.endswith("+entropy") for m in modes if m.startswith("train")}):
            t = timing(vocab, tokens, hidden, rounds, with_entropy)
            times.append(t)
            print(f"time N={tokens}{' +entropy' if with_entropy else ''}: " + ", ".join(
                f"{part} sod {t[part]['sod']['median']:.2f} s / trl {t[part]['trl']['median']:.2f} s "
                f"(ratio {t[part]['sod_over_trl']['median_of_paired_ratios']:.2f})"
                for part in ("forward", "backward")))
        for mode in modes:
            for path in PATHS:
                argv = [sys.executable, __file__, "--child", path, mode, str(tokens), str(vocab), str(hidden)]
                out = C.run_limited_child(argv, options.memory_limit_gib)
                out.update(path=path, mode=mode, tokens=tokens)
                memory.append(out)
                shown = "OOM" if out.get("oom") else (f"{out['extra_peak_mib']:.0f} MiB" if "extra_peak_mib" in out
                                                      else "error " + out.get("error", "")[-300:])
                print(f"memory N={tokens} {mode:13s} {path}: {shown}")
    rows = []
    for tokens in sizes:
        for mode in modes:
            mem = {m["path"]: m for m in memory if m["tokens"] == tokens and m["mode"] == mode}
            peak = {p: (mem[p].get("extra_peak_mib") if not mem[p].get("oom") else None) for p in PATHS}
            t = next((x for x in times if x["tokens"] == tokens and x["with_entropy"] == mode.endswith("+entropy")),
                     None)
            timed = mode.startswith("train") and t is not None
            rows.append([tokens, mode,
                         f"{t['forward']['sod_over_trl']['median_of_paired_ratios']:.2f}" if timed else "-",
                         f"{t['backward']['sod_over_trl']['median_of_paired_ratios']:.2f}" if timed else "-",
                         "OOM" if peak["sod"] is None else f"{peak['sod']:.0f}",
                         "OOM" if peak["trl"] is None else f"{peak['trl']:.0f}",
                         f"{peak['sod'] / peak['trl']:.2f}" if peak["sod"] and peak["trl"] else "-"])
    print()
    print(C.table(rows, ["tokens", "mode", "fwd CPU sod/trl", "bwd CPU sod/trl", "peak MiB sod", "peak MiB trl",
                         "peak sod/trl"]))
    C.save("bench_logprobs_vs_trl", {"vocab": vocab, "hidden": hidden, "row_tokens": ROW_TOKENS, "rounds": rounds,
                                     "threads": C.THREADS, "load_average_at_start": load_before,
                                     "correctness": check, "timing": times, "memory": memory,
                                     "wall_s": time.time() - started}, options.quick)


if __name__ == "__main__":
    main()
