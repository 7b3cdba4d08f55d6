"""Issue 19, item 4: a student with another tokenizer and chat template, distilled from the shipped toy teacher.

Two students, the same recipe, the same held-out problems:

  same-tokenizer   the demo's student: three of the teacher's four layers, the teacher's tokenizer (768-token
                   byte-level BPE, ChatML template)
  other tokenizer  the same layers, but its own 512-token byte-level BPE trained on the world's text, with the
                   teacher's ChatML template or (``--family header``) a Llama-3-style one (``<|start_header_id|>``
                   / ``<|eot_id|>``, tool turns as ``ipython``); its embeddings are transplanted: a student token starts as the mean of the teacher's
                   embeddings of that token's text in the teacher's tokenization (specials by role)

Each gets the demo's cold start (SFT on trajectories, some re-using a stale variable in the stateless tool and
retrying), is evaluated on held-out problems with the real Python tool, trained with SODTrainer (SOD weights,
the demo's settings) and evaluated again. The other-tokenizer student's teacher log-probs go through the
cross-tokenizer path, chosen automatically (the teacher's tokenizer is saved next to it). Prints a table and
saves ``benchmarks/results/cross_tokenizer_toy.json``. The demo's settings (20 steps x 8 prompts x 4) take
about 20 minutes per student on one free core; the run in the docs used fewer (see there).

    python benchmarks/cross_tokenizer_toy.py [--sod-steps 20] [--prompts-per-step 8] [--eval-problems 64]
"""

from __future__ import annotations

import argparse
import json
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


def cold_start(student, tokenizer, settings, seed: int = 1):
    """The demo's cold start (``toy.student.cold_start_student``) on a given student and tokenizer."""
    from sod_trainer.rollout.glue import ToolResponseFormatter
    from sod_trainer.toy.sft import encode_conversation, sft_train
    from sod_trainer.toy.tasks import generate_problems, student_sft_messages

    formatter = ToolResponseFormatter(tokenizer)
    problems = generate_problems(settings.cold_start_trajectories, seed=1000 + seed, split="train")
    examples = [encode_conversation(tokenizer, p.prompt(), student_sft_messages(p, lazy_error_rate=0.3), formatter)
                for p in problems]
    steps = settings.cold_start_steps
    sft_train(student, examples, steps=steps, batch_size=settings.cold_start_batch_size, learning_rate=1e-3,
              warmup_steps=max(1, steps // 10), seed=seed, log_every=max(1, steps // 10),
              pad_token_id=tokenizer.pad_token_id)
    return student.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sod-steps", type=int, default=20)
    parser.add_argument("--eval-problems", type=int, default=64)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--family", choices=["chatml", "header"], default="chatml",
                        help="the other student's chat template: the teacher's (ChatML) or Llama-3-style")
    parser.add_argument("--students", nargs="+", choices=["same", "other"], default=["same", "other"],
                        help="which students to run (results of the others are kept from an earlier run)")
    parser.add_argument("--output", default="/tmp/cross_tokenizer_toy")
    parser.add_argument("--quick", action="store_true", help="the demo's quick settings (a smoke run, ~2 minutes)")
    args = parser.parse_args()

    from sod_trainer.toy.demo import DemoSettings, _evaluate, _load_or_build_teacher, _Progress, _train
    from sod_trainer.toy.tasks import build_dataset, tokenizer_corpus
    from sod_trainer.toy.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    progress = _Progress()
    settings = (DemoSettings.quick() if args.quick
                else DemoSettings(sod_steps=args.sod_steps, eval_problems=args.eval_problems,
                                  prompts_per_step=args.prompts_per_step))
    teacher, teacher_tokenizer, _, teacher_path = _load_or_build_teacher(progress, None)
    other = build_tokenizer(corpus=tokenizer_corpus(), vocab_size=512, family=args.family)
    eval_rows = [dict(row) for row in build_dataset(settings.eval_problems, seed=settings.seed, split="eval")]
    train_dataset = build_dataset(settings.train_problems, seed=settings.seed, split="train")
    path = RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS
    earlier = json.loads(path.read_text()) if path.exists() else {}
    results = {**earlier, "teacher": teacher_path, "settings": vars(settings) | {"student_layers": list(settings.student_layers)},
               "note": "shared 2-core CPU (other programs running); one sample per held-out problem"}
    from sod_trainer.toy.models import student_from_teacher

    chosen = {"same": ("same tokenizer", teacher_tokenizer), "other": (f"other tokenizer ({args.family})", other)}
    for name, tokenizer in (chosen[key] for key in args.students):
        started = time.monotonic()
        torch.manual_seed(settings.seed)
        student = (student_from_teacher(teacher, settings.student_layers) if tokenizer is teacher_tokenizer
                   else transplanted_student(teacher, teacher_tokenizer, tokenizer, settings.student_layers))
        progress(f"{name}: cold start ({len(tokenizer)} tokens)")
        cold_start(student, tokenizer, settings, seed=settings.seed + 1)
        before, _, _ = _evaluate(student, teacher, tokenizer, eval_rows, settings, settings.seed, False)
        progress(f"{name}: cold-start accuracy {before['accuracy']:.3f}")
        training = _train(student, teacher, tokenizer, train_dataset, settings, "sod", Path(args.output), progress)
        after, _, _ = _evaluate(student, teacher, tokenizer, eval_rows, settings, settings.seed, False)
        progress(f"{name}: accuracy after SOD {after['accuracy']:.3f}")
        curve = training["curve"]
        align = [e["teacher/alignment_seconds"] for e in curve if "teacher/alignment_seconds" in e]
        scoring = [e["teacher/scoring_seconds"] for e in curve if "teacher/scoring_seconds" in e]
        step_seconds = training["seconds"] / max(1, len(curve))
        results[name] = {
            "vocabulary": len(tokenizer), "template": "chatml" if tokenizer is teacher_tokenizer else args.family, "cold_start": before, "after_sod": after,
            "cross_tokenizer_path": bool(align), "seconds": round(time.monotonic() - started, 1),
            "sod_seconds_per_step": step_seconds,
            "alignment_seconds_per_step": sum(align) / len(align) if align else None,
            "teacher_scoring_seconds_per_step": sum(scoring) / len(scoring) if scoring else None,
            "unaligned_tokens": sum(e.get("teacher/unaligned_tokens", 0) for e in curve),
            "student_tokens_per_span": [e.get("teacher/student_tokens_per_span") for e in curve][-1:],
            "teacher_tokens_per_span": [e.get("teacher/teacher_tokens_per_span") for e in curve][-1:],
            "curve": [{k: e.get(k) for k in ("step", "loss", "accuracy", "tools/failure_frequency")} for e in curve],
        }
    print("\n| student | vocabulary | cold start | after SOD | SOD s/step | alignment s/step | unaligned tokens |")
    print("|---|---|---|---|---|---|---|")
    for name in [key for key in results if key.startswith(("same tokenizer", "other tokenizer"))]:
        r = results[name]
        align = r["alignment_seconds_per_step"]
        print(f"| {name} | {r['vocabulary']} | {100 * r['cold_start']['accuracy']:.1f} % | "
              f"{100 * r['after_sod']['accuracy']:.1f} % | {r['sod_seconds_per_step']:.1f} | "
              f"{'-' if align is None else f'{align:.3f}'} | {r['unaligned_tokens']:.0f} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    sys.exit(main())
