"""Multi-turn rollout throughput: SODTrainer's rollout engine vs TRL GRPOTrainer's own tool loop, same everything.

The same TRL environment (``IncrementEnv``: a class with one tool method, written as TRL's docs write them), the
same tiny Qwen3 (one copy of the weights in both trainers), the same tokenizer with Qwen3's tool tokens and
Qwen3's chat template, the same prompts (``prompts`` x ``group`` trajectories) and 8 assistant turns per trajectory
(7 tool calls, then an answer; ``max_tool_calling_iterations=7`` in both). Generation is real HF ``generate`` in
both (every decode step a forward pass), but a logits processor forces the sampled tokens to follow a script
(``common.ForcedScript``), so the untrained model writes the tool calls and both trainers do exactly the same work;
the script checks that both rollouts sampled the same tokens.

Timed (wall and CPU, one torch thread): SOD — ``RolloutEngine.rollout`` (all turns, tool calls, observation ids);
TRL — ``GRPOTrainer._generate`` (prompt tokenization, all turns, ``parse_response``, tool calls, suffix ids). Each is
called through its trainer's batch preparation (``_generate_and_score`` / ``_generate_and_score_completions``), so
environments are set up as in training; the scoring after the rollout is not timed. Rounds are interleaved.
Throughput is sampled (model) tokens per second; tool-observation tokens are reported too.

    python benchmarks/bench_rollout_vs_trl.py --quick   # 1 round, short turns
    python benchmarks/bench_rollout_vs_trl.py           # 5 rounds
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

TURNS = 8




def counter_reward(completions, **kwargs) -> list[float]:
    return [float(len(str(c)) % 2) for c in completions]


def qwen3_tokenizer():
    from trl.chat_template_utils import qwen3_chat_template

    from sod_trainer.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"])
    tok.chat_template = qwen3_chat_template
    return tok


def scripts(tok, prompts: int, filler: int) -> tuple[list[dict], dict[int, list[list[int]]]]:
    """Prompt rows and, per row, the ids of its 8 turns (7 ``increment`` calls, then an answer)."""
    words = " First, add one. Then check the counter." * filler
    rows, out = [], {}
    for i in range(prompts):
        turns = []
        for k in range(TURNS - 1):
            call = json.dumps({"name": "increment", "arguments": {"a": 1 + (i + k) % 3}})
            turns.append(f"Step {k + 1}.{words}\n<tool_call>\n{call}\n</tool_call>")
        turns.append(f"Done.{words}")
        out[i] = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in turns]
        rows.append({"prompt": [{"role": "user", "content": f"Problem {i}: reach {7 * i + 5}."}]})
    return rows, out


def force(model, processor) -> None:
    """Every ``model.generate`` call (either trainer's) samples the scripted tokens."""
    from transformers import LogitsProcessorList

    original = model.generate

    def generate(*args, **kwargs):
        processor.reset()
        kwargs["logits_processor"] = LogitsProcessorList([processor])
        return original(*args, **kwargs)

    model.generate = generate


def build(kind: str, model, tok, dataset, group: int, output_dir: str):
    common = dict(output_dir=output_dir, per_device_train_batch_size=group, num_generations=group, max_steps=100,
                  learning_rate=1e-5, report_to=[], use_cpu=True, save_strategy="no", seed=0, logging_steps=1,
                  disable_tqdm=True, max_completion_length=4096, max_tool_calling_iterations=TURNS - 1)
    if kind == "sod":
        from sod_trainer import SODConfig, SODTrainer

        return SODTrainer(model=model, teacher_model=copy.deepcopy(model), args=SODConfig(**common),
                          train_dataset=dataset, processing_class=tok, environment_factory=C.IncrementEnv,
                          reward_funcs=[counter_reward])
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer(model=model, reward_funcs=[counter_reward], args=GRPOConfig(beta=0.0, **common),
                       train_dataset=dataset, processing_class=tok, environment_factory=C.IncrementEnv)


class Timed:
    """Wraps ``owner.name``; records wall and CPU seconds and what the wrapped call returned."""

    def __init__(self, owner, name):
        self.wall, self.cpu, self.results = [], [], []
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            result = original(*args, **kwargs)
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)
            self.results.append(result)
            return result

        setattr(owner, name, timed)


def sampled_sequences(kind: str, result) -> list[tuple[int, ...]]:
    """The model-sampled ids of each trajectory (observations left out), sorted: what both rollouts must share."""
    if kind == "sod":
        return sorted(tuple(i for i, m in zip(t.completion_ids, t.assistant_mask) if m) for t in result)
    _, completion_ids, tool_mask = result[:3]
    return sorted(tuple(i for i, m in zip(ids, mask) if m) for ids, mask in zip(completion_ids, tool_mask))


def run(prompts: int, group: int, filler: int, rounds: int, hidden: int) -> dict:
    from datasets import Dataset

    tok = qwen3_tokenizer()
    rows, script = scripts(tok, prompts, filler)
    model = C.tiny_model(tok, hidden=hidden, layers=2, seed=0)
    model.config.max_position_embeddings = 8192
    dataset = Dataset.from_list(rows)
    batch = [row for row in rows for _ in range(group)]
    tmp = tempfile.TemporaryDirectory()
    trainers, timers = {}, {}
    for kind in ("sod", "trl_grpo"):
        student = copy.deepcopy(model)
        force(student, C.ForcedScript(tok, script))
        trainers[kind] = build(kind, student, tok, dataset, group, f"{tmp.name}/{kind}")
    timers["sod"] = Timed(trainers["sod"].rollout_engine, "rollout")
    timers["trl_grpo"] = Timed(trainers["trl_grpo"], "_generate")

    def rollout(kind):
        def go():
            trainer = trainers[kind]
            trainer.model.train()
            if kind == "sod":
                trainer._generate_and_score(copy.deepcopy(batch), "train")
            else:
                trainer._generate_and_score_completions(copy.deepcopy(batch))
            return timers[kind].wall[-1]
        return go

    for kind in trainers:  # warm-up round
        rollout(kind)()
    sequences = {kind: sampled_sequences(kind, timers[kind].results[-1]) for kind in trainers}
    same = sequences["sod"] == sequences["trl_grpo"]
    sod_traj = timers["sod"].results[-1]
    turns = statistics.mean(t.num_turns for t in sod_traj)
    sampled = sum(len(s) for s in sequences["sod"])
    observation = sum(len(t.completion_ids) - sum(t.assistant_mask) for t in sod_traj)
    for timer in timers.values():
        timer.wall.clear()
        timer.cpu.clear()
    C.interleave({kind: rollout(kind) for kind in trainers}, rounds, log=None)
    out = {"prompts": prompts, "group": group, "trajectories": len(batch), "assistant_turns": turns,
           "sampled_tokens": sampled, "observation_tokens": observation, "same_sampled_tokens": same,
           "rounds": rounds, "hidden": hidden}
    for kind, timer in timers.items():
        out[kind] = {"wall_s": timer.wall, "cpu_s": timer.cpu,
                     "tokens_per_s_wall": sampled / statistics.median(timer.wall),
                     "tokens_per_s_cpu": sampled / statistics.median(timer.cpu)}
    out["throughput_sod_over_trl_wall"] = C.paired_ratios(timers["trl_grpo"].wall, timers["sod"].wall)
    out["throughput_sod_over_trl_cpu"] = C.paired_ratios(timers["trl_grpo"].cpu, timers["sod"].cpu)
    out["target_met"] = bool(same and out["throughput_sod_over_trl_cpu"]["median_of_paired_ratios"] >= 1.0)
    for trainer in trainers.values():
        if hasattr(trainer, "close"):
            trainer.close()
    tmp.cleanup()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    options = parser.parse_args()
    load = C.os.getloadavg()
    if options.quick:
        out = run(prompts=2, group=2, filler=1, rounds=options.rounds or 1, hidden=64)
    else:
        out = run(prompts=4, group=4, filler=6, rounds=options.rounds or 5, hidden=128)
    rows = [[kind, out["sampled_tokens"], statistics.median(out[kind]["wall_s"]), statistics.median(out[kind]["cpu_s"]),
             out[kind]["tokens_per_s_wall"], out[kind]["tokens_per_s_cpu"]] for kind in ("sod", "trl_grpo")]
    print(f"\n{out['trajectories']} trajectories x {out['assistant_turns']:.0f} assistant turns, "
          f"{out['sampled_tokens']} sampled + {out['observation_tokens']} observation tokens per rollout; "
          f"same sampled tokens in both: {out['same_sampled_tokens']}")
    print(C.table(rows, ["rollout", "sampled tokens", "wall s", "CPU s", "tokens/s (wall)", "tokens/s (CPU)"]))
    ratio = out["throughput_sod_over_trl_cpu"]
    print(f"throughput SOD / TRL (CPU, paired): {ratio['median_of_paired_ratios']:.2f} "
          f"[{ratio['paired_ratio_q1']:.2f}, {ratio['paired_ratio_q3']:.2f}]; wall "
          f"{out['throughput_sod_over_trl_wall']['median_of_paired_ratios']:.2f}; target (>= 1) met: "
          f"{out['target_met']}")
    C.save("bench_rollout_vs_trl", {"load_average_at_start": load, "threads": C.THREADS,
                                    "note": "shared 2-core machine", **out}, options.quick)


if __name__ == "__main__":
    main()
