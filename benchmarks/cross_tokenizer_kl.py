"""Issue 19 diagnostic: did SOD move a student towards its teacher? Independent of the trainer's cross path.

For each saved student (the stages of ``cross_tokenizer_toy.py``), samples trajectories on held-out problems and
computes, per trajectory, the student's log-prob of its own sampled assistant tokens and the teacher's log-prob of
the same assistant text in the teacher's own tokenization and template (``toy.sft.encode_conversation``, the format
the teacher was trained on). Their difference, averaged over trajectories, estimates the sequence-level reverse KL
KL(student || teacher) in nats per trajectory (and per assistant character). Distillation should lower it.

    python benchmarks/cross_tokenizer_kl.py --stages DIR [--problems 48] [--tokenizer other|same] NAME=SUBDIR ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


def sequence_logps(model, ids: list[int], mask: list[int]) -> float:
    """Sum of ``model``'s log-probs of the tokens of ``ids`` where ``mask`` is 1."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    chosen = logps.gather(1, x[0, 1:, None])[:, 0]
    return float((chosen * torch.tensor(mask[1:], dtype=chosen.dtype)).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", required=True)
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--max-completion-length", type=int, default=640)
    parser.add_argument("models", nargs="+", help="NAME=SUBDIR:tokenizer (tokenizer: same or other)")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM

    from sod_trainer.rollout.glue import ToolResponseFormatter
    from sod_trainer.toy.demo import _load_or_build_teacher, _Progress
    from sod_trainer.toy.evaluation import sample_trajectories
    from sod_trainer.toy.sft import encode_conversation
    from sod_trainer.toy.tasks import build_rows, tokenizer_corpus
    from sod_trainer.toy.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    teacher, teacher_tokenizer, _, _ = _load_or_build_teacher(_Progress(), None)
    tokenizers = {"same": teacher_tokenizer,
                  "other": build_tokenizer(corpus=tokenizer_corpus(), vocab_size=512, family="chatml")}
    rows = build_rows(args.problems, seed=7, split="eval")
    formatter = ToolResponseFormatter(teacher_tokenizer)
    results = {}
    for spec in args.models:
        name, rest = spec.split("=")
        subdir, which = rest.split(":")
        student = AutoModelForCausalLM.from_pretrained(Path(args.stages) / subdir).float().eval()
        torch.manual_seed(0)
        rollouts = sample_trajectories(student, tokenizers[which], rows, max_completion_length=args.max_completion_length,
                                       max_turns=6, batch_size=64, tool_workers=4)
        gaps, chars = [], []
        for row, r in zip(rows, rollouts):
            if r.stop_reason != "answer":
                continue
            s = sequence_logps(student, r.prompt_ids + r.completion_ids, [0] * len(r.prompt_ids) + r.assistant_mask)
            messages = []
            for text, observation in zip(r.texts, r.observations):
                messages.append({"role": "assistant", "content": text})
                if observation is not None:
                    messages.append({"role": "tool", "content": observation})
            encoded = encode_conversation(teacher_tokenizer, row["prompt"], messages, formatter)
            q = sequence_logps(teacher, encoded.input_ids, encoded.loss_mask)
            gaps.append(s - q)
            chars.append(sum(len(t) for t in r.texts))
        results[name] = {"trajectories": len(gaps), "kl_per_trajectory": statistics.fmean(gaps),
                         "kl_per_char": sum(gaps) / sum(chars), "accuracy": statistics.fmean(r.correct for r in rollouts)}
        print(f"{name}: {results[name]}", flush=True)
    out = Path(__file__).resolve().parent / "results" / "cross_tokenizer_kl.json"
    earlier = json.loads(out.read_text()) if out.exists() else {}  # keep other models' rows
    out.write_text(json.dumps(earlier | results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
