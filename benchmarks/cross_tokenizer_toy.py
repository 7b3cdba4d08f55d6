"""Issue 19, item 4: a student with another tokenizer and chat template, distilled from the shipped toy teacher.

Two students, the same token budget, SOD recipe and held-out problems:

  same-tokenizer   the demo's student: three of the teacher's four layers, the teacher's tokenizer (768-token
                   byte-level BPE, ChatML template), the demo's cold start (30 SFT steps)
  other tokenizer  the same layers, but its own 512-token byte-level BPE trained on the world's text, with the
                   teacher's ChatML template or (``--family header``) a Llama-3-style one (``<|start_header_id|>``
                   / ``<|eot_id|>``, tool turns as ``ipython``); its embeddings are transplanted: a student token
                   starts as the mean of the teacher's embeddings of that token's text in the teacher's
                   tokenization (specials by role). It relearns the task through a new vocabulary, so its cold
                   start is longer (``--other-cold-start-steps``, ``--other-cold-start-trajectories``)

Each is cold-started (SFT on trajectories, some re-using a stale variable in the stateless tool and retrying),
evaluated on held-out problems with the real Python tool (``--eval-samples`` samples per problem), trained with
SODTrainer (SOD weights) and evaluated again on the same problems. The other student's teacher log-probs go
through the cross-tokenizer path, chosen automatically (the teacher's tokenizer is saved next to it).

``--lengths`` first prints the completion-token lengths of the world's reference trajectories under each
tokenizer and template (what ``--max-completion-length`` must hold). The run is staged under ``--work-dir``
(cold-started student, its evaluation, the SOD-trained student, its evaluation): a killed run resumes where it
stopped. Prints a table with 95 % intervals (bootstrap over problems) and appends the run to
``benchmarks/results/cross_tokenizer_toy.json`` (earlier runs are kept).

    python benchmarks/cross_tokenizer_toy.py --lengths
    python benchmarks/cross_tokenizer_toy.py [--students same other] [--max-completion-length 640]
        [--sod-steps 20] [--prompts-per-step 8] [--eval-problems 128] [--eval-samples 2]
    python benchmarks/cross_tokenizer_toy.py --quick      # a smoke run of every stage, a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "cross_tokenizer_toy.json"
SPECIALS = {"<|eot_id|>": "<|im_end|>", "<|start_header_id|>": "<|im_start|>", "<|finetune_pad|>": "<|endoftext|>"}


def transplanted_student(teacher, teacher_tokenizer, tokenizer, layers=(0, 1, 3)):
    """The teacher's layers ``layers`` under a new vocabulary: each token's embedding is the mean of the teacher's
    embeddings of its text (tied input and output embeddings, as the toy models have)."""
    from sod_trainer.alignment import TokenBytes
    from sod_trainer.toy.models import student_from_teacher

    student = student_from_teacher(teacher, layers=layers)
    source = teacher.get_input_embeddings().weight.detach()
    pieces = TokenBytes(tokenizer)._byte_table()
    rows = []
    for token_id, piece in enumerate(pieces):
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token in SPECIALS:
            ids = [teacher_tokenizer.convert_tokens_to_ids(SPECIALS[token])]
        else:
            text = (piece or b"").decode("utf-8", errors="ignore")
            ids = teacher_tokenizer.encode(text, add_special_tokens=False) if text else []
        rows.append(source[ids].mean(0) if ids else source.mean(0))
    student.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        student.get_input_embeddings().weight.copy_(torch.stack(rows))
    student.tie_weights()
    for config in (student.config, student.generation_config):
        config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    student.config.vocab_size = len(tokenizer)
    return student


def cold_start(student, tokenizer, trajectories: int, steps: int, batch_size: int, seed: int = 1) -> dict:
    """The demo's cold start (``toy.student.cold_start_student``) on a given student and tokenizer."""
    from sod_trainer.rollout.glue import ToolResponseFormatter
    from sod_trainer.toy.sft import encode_conversation, sft_train
    from sod_trainer.toy.tasks import generate_problems, student_sft_messages

    formatter = ToolResponseFormatter(tokenizer)
    problems = generate_problems(trajectories, seed=1000 + seed, split="train")
    examples = [encode_conversation(tokenizer, p.prompt(), student_sft_messages(p, lazy_error_rate=0.3), formatter)
                for p in problems]
    result = sft_train(student, examples, steps=steps, batch_size=batch_size, learning_rate=1e-3,
                       warmup_steps=max(1, steps // 10), seed=seed, log_every=max(1, steps // 10),
                       pad_token_id=tokenizer.pad_token_id)
    student.eval()
    return {"steps": steps, "trajectories": trajectories, "batch_size": batch_size, "seconds": result.seconds,
            "loss_log": result.log}


def reference_lengths(tokenizers: dict, n: int = 400) -> dict:
    """Completion tokens (assistant turns, end-of-turn tokens, tool glue and observations) of the world's reference
    trajectories under each tokenizer: clean ones, ones with an error and retry, and the cold start's mix."""
    from sod_trainer.rollout.glue import ToolResponseFormatter
    from sod_trainer.toy.sft import encode_conversation
    from sod_trainer.toy.tasks import generate_problems, reference_messages, student_sft_messages

    problems = generate_problems(n, seed=5, split="eval")
    kinds = {"clean": lambda p: reference_messages(p), "error and retry": lambda p: reference_messages(p, lazy_error=True),
             "cold-start mix (30 % retry)": lambda p: student_sft_messages(p, lazy_error_rate=0.3)}
    table = {}
    for name, tokenizer in tokenizers.items():
        formatter = ToolResponseFormatter(tokenizer)
        for kind, messages in kinds.items():
            lengths = sorted(len(e.input_ids) - e.prompt_length for e in
                             (encode_conversation(tokenizer, p.prompt(), messages(p), formatter) for p in problems))
            table[f"{name} / {kind}"] = {
                "mean": statistics.mean(lengths), "p90": lengths[int(0.9 * (n - 1))], "max": lengths[-1],
                **{f"share_over_{b}": sum(x > b for x in lengths) / n for b in (320, 480, 640)}}
    return table


def bootstrap(per_problem: list[float], other: list[float] | None = None, draws: int = 4000) -> list[float]:
    """95 % interval of the mean (or of the paired difference ``per_problem - other``), resampling problems."""
    values = per_problem if other is None else [a - b for a, b in zip(per_problem, other)]
    rng = random.Random(0)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(draws))
    return [means[int(0.025 * draws)], means[int(0.975 * draws) - 1]]


def evaluate(student, tokenizer, rows, samples: int, settings, seed: int) -> dict:
    """Accuracy (avg over ``samples`` per problem) and tool statistics; per-problem accuracy for the intervals."""
    from sod_trainer.toy.demo import _environment_factory
    from sod_trainer.toy.evaluation import sample_trajectories, summarize

    torch.manual_seed(seed)
    started = time.monotonic()
    expanded = [dict(row) for row in rows for _ in range(samples)]
    rollouts = sample_trajectories(student, tokenizer, expanded, max_completion_length=settings.max_completion_length,
                                   max_turns=settings.max_tool_calling_iterations, batch_size=64,
                                   tool_workers=settings.tool_workers,
                                   environment_factory=_environment_factory(settings, seed=10_000 + seed))
    per_problem = [statistics.fmean(r.correct for r in rollouts[i * samples:(i + 1) * samples])
                   for i in range(len(rows))]
    stops = {}
    for r in rollouts:
        stops[r.stop_reason] = stops.get(r.stop_reason, 0) + 1
    return {**summarize(rollouts), "samples_per_problem": samples, "per_problem": per_problem,
            "interval_95": bootstrap(per_problem), "stop_reasons": {k: v / len(rollouts) for k, v in stops.items()},
            "completion_tokens_mean": statistics.fmean(len(r.completion_ids) for r in rollouts),
            "seconds": round(time.monotonic() - started, 1)}


def run_student(key, name, tokenizer, teacher, teacher_tokenizer, settings, args, eval_rows, train_dataset, work,
                progress) -> dict:
    """Cold start -> held-out evaluation -> SOD -> held-out evaluation, each stage saved under ``work/key``."""
    from transformers import AutoModelForCausalLM

    from sod_trainer.toy.demo import _train
    from sod_trainer.toy.models import student_from_teacher

    folder = work / key
    folder.mkdir(parents=True, exist_ok=True)
    state = json.loads((folder / "state.json").read_text()) if (folder / "state.json").exists() else {}

    def save():
        (folder / "state.json").write_text(json.dumps(state, indent=1, default=float))

    other = tokenizer is not teacher_tokenizer
    steps = args.other_cold_start_steps if other else args.same_cold_start_steps
    trajectories = args.other_cold_start_trajectories if other else args.same_cold_start_trajectories
    if "cold_start_run" in state:
        student = AutoModelForCausalLM.from_pretrained(folder / "cold").float().eval()
        progress(f"{name}: cold-started student loaded from {folder / 'cold'}")
    else:
        torch.manual_seed(settings.seed)
        student = (transplanted_student(teacher, teacher_tokenizer, tokenizer, settings.student_layers) if other
                   else student_from_teacher(teacher, settings.student_layers))
        progress(f"{name}: cold start ({len(tokenizer)} tokens, {steps} SFT steps on {trajectories} trajectories)")
        state["cold_start_run"] = cold_start(student, tokenizer, trajectories, steps, settings.cold_start_batch_size,
                                             seed=settings.seed + 1)
        student.save_pretrained(folder / "cold")
        save()
    if "cold_start" not in state:
        state["cold_start"] = evaluate(student, tokenizer, eval_rows, args.eval_samples, settings, settings.seed)
        save()
    progress(f"{name}: cold-start accuracy {state['cold_start']['accuracy']:.3f} "
             f"{[round(x, 3) for x in state['cold_start']['interval_95']]}")
    if "training" not in state:
        state["training"] = _train(student, teacher, tokenizer, train_dataset, settings, "sod", Path(args.output),
                                   progress)
        student.save_pretrained(folder / "sod")
        save()
    elif "after_sod" not in state:
        student = AutoModelForCausalLM.from_pretrained(folder / "sod").float().eval()
    if "after_sod" not in state:
        state["after_sod"] = evaluate(student, tokenizer, eval_rows, args.eval_samples, settings, settings.seed)
        save()
    before, after = state["cold_start"], state["after_sod"]
    progress(f"{name}: accuracy after SOD {after['accuracy']:.3f} {[round(x, 3) for x in after['interval_95']]}")
    curve = state["training"]["curve"]
    align = [e["teacher/alignment_seconds"] for e in curve if "teacher/alignment_seconds" in e]
    scoring = [e["teacher/scoring_seconds"] for e in curve if "teacher/scoring_seconds" in e]
    return {
        "vocabulary": len(tokenizer), "template": args.family if other else "chatml",
        "cold_start_run": {k: v for k, v in state["cold_start_run"].items() if k != "loss_log"}
        | {"final_loss": state["cold_start_run"]["loss_log"][-1]["loss"]},
        "cold_start": {k: v for k, v in before.items() if k != "per_problem"},
        "after_sod": {k: v for k, v in after.items() if k != "per_problem"},
        "gain": after["accuracy"] - before["accuracy"],
        "gain_interval_95": bootstrap(after["per_problem"], before["per_problem"]),
        "cross_tokenizer_path": bool(align),
        "sod_seconds": state["training"]["seconds"],
        "sod_seconds_per_step": state["training"]["seconds"] / max(1, len(curve)),
        "alignment_seconds_per_step": sum(align) / len(align) if align else None,
        "teacher_scoring_seconds_per_step": sum(scoring) / len(scoring) if scoring else None,
        "unaligned_tokens": sum(e.get("teacher/unaligned_tokens", 0) for e in curve),
        "student_tokens_per_span": [e.get("teacher/student_tokens_per_span") for e in curve][-1:],
        "teacher_tokens_per_span": [e.get("teacher/teacher_tokens_per_span") for e in curve][-1:],
        "curve": [{k: e.get(k) for k in ("step", "loss", "accuracy", "tools/failure_frequency",
                                         "teacher/alignment_seconds", "teacher/scoring_seconds")} for e in curve],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sod-steps", type=int, default=20)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--eval-problems", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per held-out problem")
    parser.add_argument("--max-completion-length", type=int, default=640,
                        help="token budget of a trajectory (the demo's is 320: too short, see --lengths)")
    parser.add_argument("--other-cold-start-steps", type=int, default=120,
                        help="SFT steps of the other student's cold start (runs 4-6: 120; runs 2-3: 300)")
    parser.add_argument("--other-cold-start-trajectories", type=int, default=1024)
    parser.add_argument("--grpo-coef", type=float, default=1.0, help="outcome (GRPO) term's weight; 0: distillation only")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (cold-start data and order, SOD batches, sampling); the held-out problems "
                             "stay those of seed 0")
    parser.add_argument("--opd-coef", type=float, default=1.0,
                        help="distillation term's weight; 0: plain GRPO, a control without the teacher's signal")
    parser.add_argument("--same-cold-start-steps", type=int, default=30, help="the demo's cold start")
    parser.add_argument("--same-cold-start-trajectories", type=int, default=256)
    parser.add_argument("--family", choices=["chatml", "header"], default="chatml",
                        help="the other student's chat template: the teacher's (ChatML) or Llama-3-style")
    parser.add_argument("--students", nargs="+", choices=["same", "other"], default=["same", "other"])
    parser.add_argument("--work-dir", default="/tmp/cross_tokenizer_toy/stages",
                        help="staged results; a rerun with the same settings resumes from here")
    parser.add_argument("--output", default="/tmp/cross_tokenizer_toy")
    parser.add_argument("--lengths", action="store_true", help="only measure reference trajectory lengths")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of every stage")
    parser.add_argument("--label", default="", help="a name for this run in the results file")
    args = parser.parse_args(argv)

    from sod_trainer.toy.demo import DemoSettings, _load_or_build_teacher, _Progress
    from sod_trainer.toy.tasks import build_dataset, tokenizer_corpus
    from sod_trainer.toy.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    progress = _Progress()
    teacher, teacher_tokenizer, _, teacher_path = _load_or_build_teacher(progress, None)
    other = build_tokenizer(corpus=tokenizer_corpus(), vocab_size=512, family=args.family)
    path = RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS

    def load_results() -> dict:  # read at write time: another run may have written meanwhile
        return json.loads(path.read_text()) if path.exists() else {}

    if args.lengths:
        table = reference_lengths({"teacher 768 ChatML": teacher_tokenizer, f"other 512 {args.family}": other})
        print("| tokenizer / trajectories | mean | p90 | max | > 320 | > 480 | > 640 |\n|---|---|---|---|---|---|---|")
        for name, row in table.items():
            print(f"| {name} | {row['mean']:.0f} | {row['p90']} | {row['max']} | {100 * row['share_over_320']:.0f} % "
                  f"| {100 * row['share_over_480']:.0f} % | {100 * row['share_over_640']:.0f} % |")
        results = load_results()
        results.setdefault("reference_lengths", {}).update(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=float) + "\n")
        return
    if args.quick:
        settings = DemoSettings.quick(max_completion_length=args.max_completion_length)
        args.other_cold_start_steps, args.other_cold_start_trajectories, args.eval_samples = 4, 32, 1
        args.same_cold_start_steps, args.same_cold_start_trajectories = 4, 32
    else:
        settings = DemoSettings(seed=args.seed, sod_steps=args.sod_steps, eval_problems=args.eval_problems,
                                prompts_per_step=args.prompts_per_step,
                                max_completion_length=args.max_completion_length, grpo_coef=args.grpo_coef,
                                opd_coef=args.opd_coef)
    eval_rows = [dict(row) for row in build_dataset(settings.eval_problems, seed=0, split="eval")]  # every seed
    train_dataset = build_dataset(settings.train_problems, seed=settings.seed, split="train")
    run_settings = dataclasses.asdict(settings) | {
        "student_layers": list(settings.student_layers), "eval_samples": args.eval_samples,
        "other_cold_start_steps": args.other_cold_start_steps,
        "other_cold_start_trajectories": args.other_cold_start_trajectories, "family": args.family,
        "same_cold_start_steps": args.same_cold_start_steps,
        "same_cold_start_trajectories": args.same_cold_start_trajectories}
    tag = "-".join(f"{k}{run_settings[k]}" for k in ("max_completion_length", "sod_steps", "prompts_per_step",
                                                     "eval_problems", "eval_samples", "other_cold_start_steps",
                                                     "other_cold_start_trajectories", "family"))
    if (args.same_cold_start_steps, args.same_cold_start_trajectories) != (30, 256):  # not the demo's cold start
        tag += f"-same_cold_start{args.same_cold_start_steps}x{args.same_cold_start_trajectories}"
    if settings.grpo_coef != 1.0:
        tag += f"-grpo_coef{settings.grpo_coef:g}"
    if settings.opd_coef != 1.0:
        tag += f"-opd_coef{settings.opd_coef:g}"
    if settings.seed != 0:
        tag += f"-seed{settings.seed}"
    work = Path(args.work_dir) / ("quick-" + tag if args.quick else tag)
    run = {"label": args.label or tag, "teacher": teacher_path, "settings": run_settings,
           "note": "shared 2-core CPU (other jobs on the other core), torch threads = 1", "students": {}}
    chosen = {"same": ("same tokenizer", teacher_tokenizer), "other": (f"other tokenizer ({args.family})", other)}
    for key in args.students:
        name, tokenizer = chosen[key]
        run["students"][name] = run_student(key, name, tokenizer, teacher, teacher_tokenizer, settings, args,
                                            eval_rows, train_dataset, work, progress)
    n = settings.eval_problems
    print(f"\nmax_completion_length {settings.max_completion_length}, {settings.sod_steps} SOD steps x "
          f"{settings.prompts_per_step} prompts x {settings.num_generations}, {n} held-out problems x "
          f"{args.eval_samples} samples (95 % bootstrap intervals over problems)\n")
    print("| student | cold start (SFT steps) | cold start | after SOD | gain | out of budget (before → after) "
          "| SOD s/step | alignment s/step | unaligned tokens |")
    print("|---|---|---|---|---|---|---|---|---|")

    def pct(x, interval):
        return f"{100 * x:.1f} % [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"

    for name, r in run["students"].items():
        align = r["alignment_seconds_per_step"]
        budget = [sum(r[k]["stop_reasons"].get(s, 0) for s in ("budget", "observation_over_budget"))
                  for k in ("cold_start", "after_sod")]
        print(f"| {name} | {r['cold_start_run']['steps']} | {pct(r['cold_start']['accuracy'], r['cold_start']['interval_95'])} | "
              f"{pct(r['after_sod']['accuracy'], r['after_sod']['interval_95'])} | "
              f"{pct(r['gain'], r['gain_interval_95'])} | {100 * budget[0]:.0f} % → {100 * budget[1]:.0f} % | "
              f"{r['sod_seconds_per_step']:.1f} | {'-' if align is None else f'{align:.3f}'} | "
              f"{r['unaligned_tokens']:.0f} |")
    results = load_results()
    runs = [old for old in results.get("runs", []) if old.get("label") != run["label"]]
    results["runs"] = runs + [run]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
