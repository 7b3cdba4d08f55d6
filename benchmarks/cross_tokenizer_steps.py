"""Issue 19 diagnostic: per-step d_k of a student with another tokenizer, through the cross path and independently.

For each saved student (the stages of ``cross_tokenizer_toy.py``), samples one trajectory per held-out problem and
scores it twice:

  cross path    as the trainer does: ``CrossTokenizerTeacher`` (the teacher reads the conversation in its own
                template and tokenizer, spans aligned on bytes), ``spread_span_logps``, ``step_and_token_weights``
  independent   the teacher's log-prob of each assistant turn (and its end-of-turn token) in the teacher's own
                tokenization and template (``toy.sft.encode_conversation``), minus the student's log-prob of the
                tokens it sampled for that turn

Per step k it reports d_k (cross path), the mean gap Σ(q_t − s_t) both ways (they must agree: the span rule
conserves each span's q − s), how many turns disagree (only turns with bytes that are not valid UTF-8 should: their
tokens are left out as unaligned), the share of turns whose sampled tokens are the tokenizer's own (canonical)
tokenization of their text, and first turns with a large gap (slips). ``--probe`` prints the student's probability
of each token of a text after the prompt (e.g. a word it learned to break). Results go to
``benchmarks/results/cross_tokenizer_steps.json``.

    python benchmarks/cross_tokenizer_steps.py --stages DIR NAME=SUBDIR ... [--problems 48]
        [--probe "The first value is the product"]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "cross_tokenizer_steps.json"


def token_logps(model, ids: list[int]) -> torch.Tensor:
    """``model``'s log-prob of each of ``ids[1:]`` given the tokens before it."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    return logps.gather(1, x[0, 1:, None])[:, 0]


def turn_runs(mask: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of ones in ``mask`` (the teacher-side assistant turns)."""
    runs, start = [], None
    for position, value in enumerate(mask + [0]):
        if value and start is None:
            start = position
        elif not value and start is not None:
            runs.append((start, position))
            start = None
    return runs


def score_student(student, tokenizer, teacher, teacher_tokenizer, rows, max_completion_length: int,
                  slip_nats: float) -> dict:
    """Sample one trajectory per row and compare the cross path's per-step gaps with the independent ones."""
    from sod_trainer.data import encode_prompt
    from sod_trainer.environments import PythonToolEnvironment
    from sod_trainer.objective import spread_span_logps, step_and_token_weights, step_ids_from_mask
    from sod_trainer.rollout import RolloutEngine
    from sod_trainer.rollout.glue import ToolResponseFormatter
    from sod_trainer.rollout.hf import HFGenerationBackend
    from sod_trainer.scoring import collate_trajectories
    from sod_trainer.teacher import LocalTeacher
    from sod_trainer.teacher_cross import CrossTokenizerTeacher
    from sod_trainer.toy.sft import encode_conversation

    torch.manual_seed(0)
    backend = HFGenerationBackend(lambda: nullcontext(student), tokenizer, temperature=1.0, batch_size=64)
    engine = RolloutEngine(backend, tokenizer, PythonToolEnvironment, max_completion_length=max_completion_length,
                           max_turns=7, tool_workers=2)
    try:
        trajectories = engine.rollout([encode_prompt(tokenizer, r["prompt"], max_prompt_length=None) for r in rows],
                                      rows)
    finally:
        engine.close()
    tensors = collate_trajectories(trajectories, tokenizer.pad_token_id)
    width = tensors["assistant_mask"].shape[1]
    s = torch.zeros(len(trajectories), width)
    for row, t in enumerate(trajectories):
        s[row, :len(t.completion_ids)] = token_logps(student, t.prompt_ids + t.completion_ids)[len(t.prompt_ids) - 1:]
    cross = CrossTokenizerTeacher(LocalTeacher(teacher, temperature=1.0), tokenizer, teacher_tokenizer,
                                  eos_token_ids=[i for i in engine.eos_token_ids if i is not None])
    scores = cross.score_trajectories(trajectories, [r["prompt"] for r in rows], width)
    q = spread_span_logps(s, scores.logps, scores.span_ids)
    d, _, _, _ = step_and_token_weights(s, q, step_ids_from_mask(tensors["assistant_mask"]), scheme="sod")
    formatter = ToolResponseFormatter(teacher_tokenizer)
    turns = []
    for row, t in enumerate(trajectories):
        messages = []
        for turn in t.turns:
            messages.append({"role": "assistant", "content": turn.text})
            if turn.observation is not None:
                messages.append({"role": "tool", "content": turn.observation})
        encoded = encode_conversation(teacher_tokenizer, rows[row]["prompt"], messages, formatter)
        teacher_logps = token_logps(teacher, encoded.input_ids)
        runs = turn_runs(encoded.loss_mask)
        for k, turn in enumerate(t.turns):
            positions = list(range(turn.start, turn.end))
            sampled = t.completion_ids[turn.start:turn.end]
            body = sampled[:-1] if sampled and sampled[-1] == tokenizer.eos_token_id else sampled
            gap = float((q[row, positions] - s[row, positions]).sum())
            start, end = runs[k]
            independent = float(teacher_logps[start - 1:end - 1].sum() - s[row, positions].sum())
            turns.append({"trajectory": row, "step": k + 1, "tokens": len(positions), "d": float(d[row, k]),
                          "gap_cross": gap, "gap_independent": independent, "text": turn.text,
                          "canonical": body == tokenizer.encode(turn.text, add_special_tokens=False),
                          "invalid_utf8": "\ufffd" in turn.text})
    steps = {}
    for k in sorted({t["step"] for t in turns}):
        at = [t for t in turns if t["step"] == k]
        steps[k] = {"turns": len(at), "d_k": statistics.fmean(t["d"] for t in at),
                    "gap_cross": statistics.fmean(t["gap_cross"] for t in at),
                    "gap_independent": statistics.fmean(t["gap_independent"] for t in at),
                    "canonical_share": statistics.fmean(t["canonical"] for t in at)}
    agree = [abs(t["gap_cross"] - t["gap_independent"]) for t in turns if not t["invalid_utf8"]]
    first = [t for t in turns if t["step"] == 1]
    slips = [t for t in first if t["gap_cross"] < -slip_nats]
    total = {}
    for t in turns:
        total[t["trajectory"]] = total.get(t["trajectory"], 0.0) + t["gap_cross"]
    return {
        "trajectories": len(trajectories), "steps": steps,
        "gap_per_trajectory": statistics.fmean(total.values()),
        "gap_step_1": statistics.fmean(t["gap_cross"] for t in first),
        "max_disagreement_valid_utf8": max(agree),
        "disagreeing_turns": [{k: t[k] for k in ("trajectory", "step", "gap_cross", "gap_independent", "invalid_utf8")}
                              for t in turns if abs(t["gap_cross"] - t["gap_independent"]) > 1e-3],
        "first_turns_with_slip": len(slips), "slip_nats": slip_nats,
        "d_1_without_slip": statistics.fmean(t["d"] for t in first if t not in slips),
        "d_1_with_slip": statistics.fmean(t["d"] for t in slips) if slips else None,
        "slipped_first_turns": [t["text"].split("\n")[0] for t in slips][:16],
    }


def probe(student, tokenizer, rows, text: str) -> list[tuple[str, float]]:
    """Mean probability (over ``rows``' prompts) of each token of ``text``'s tokenization, after the ones before it."""
    from sod_trainer.data import encode_prompt

    ids = tokenizer.encode(text, add_special_tokens=False)
    sums = torch.zeros(len(ids))
    for row in rows:
        prompt = encode_prompt(tokenizer, row["prompt"], max_prompt_length=None)
        sums += token_logps(student, prompt + ids)[len(prompt) - 1:].exp()
    return [(token, round(float(p) / len(rows), 4)) for token, p in zip(tokenizer.convert_ids_to_tokens(ids), sums)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", required=True, help="a run folder of cross_tokenizer_toy.py's --work-dir")
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--max-completion-length", type=int, default=640)
    parser.add_argument("--slip-nats", type=float, default=10.0, help="a first turn with a larger gap is a slip")
    parser.add_argument("--probe", default="", help="a text whose token probabilities to print for each student")
    parser.add_argument("models", nargs="+", help="NAME=SUBDIR (a student saved with the 512-token ChatML tokenizer)")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM

    from sod_trainer.toy.demo import _load_or_build_teacher, _Progress
    from sod_trainer.toy.tasks import build_rows, tokenizer_corpus
    from sod_trainer.toy.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    teacher, teacher_tokenizer, _, _ = _load_or_build_teacher(_Progress(), None)
    teacher.eval()
    tokenizer = build_tokenizer(corpus=tokenizer_corpus(), vocab_size=512, family="chatml")
    rows = build_rows(args.problems, seed=7, split="eval")
    results = {}
    for spec in args.models:
        name, subdir = spec.split("=")
        student = AutoModelForCausalLM.from_pretrained(Path(args.stages) / subdir).float().eval()
        result = score_student(student, tokenizer, teacher, teacher_tokenizer, rows, args.max_completion_length,
                               args.slip_nats)
        if args.probe:
            result["probe"] = {"text": args.probe, "token_probabilities": probe(student, tokenizer, rows, args.probe)}
        results[name] = result
        print(f"{name}: d_k by step " + ", ".join(f"{k}: {v['d_k']:.3f}" for k, v in result["steps"].items())
              + f"; gap per trajectory {result['gap_per_trajectory']:.1f} (step 1: {result['gap_step_1']:.1f}); "
              f"first turns with a slip {result['first_turns_with_slip']}/{args.problems}; max cross-vs-independent "
              f"disagreement {result['max_disagreement_valid_utf8']:.2e} nats", flush=True)
        if args.probe:
            print(f"  probe: {result['probe']['token_probabilities']}")
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps(earlier | {"problems": args.problems, "stages": args.stages} | results, indent=1)
                       + "\n")


if __name__ == "__main__":
    sys.exit(main())
