"""Benchmark: the cost of aligning a teacher of another tokenizer (issue 19) at ~1k and ~8k completion tokens.

Per length, two SODTrainers from the same student and config are stepped alternately (order swapped every round):

  shared  the teacher shares the student's tokenizer (the default fast path)
  cross   the teacher has another tokenizer and chat template (a 400-token byte-level BPE, Llama-3-style glue):
          the conversation is re-rendered and re-tokenized for it, both tokenizations are aligned on the bytes
          of every assistant turn, the span log-probs are mapped back (``CrossTokenizerTeacher``)

Both teachers are the same tiny model shape (their vocabularies differ: 512 and 400 tokens). The rollouts are
scripted (no generation cost: the worst case for the alignment's share) with an in-process calculator tool,
4 assistant turns per trajectory with unicode in the text. The alignment's own time (rendering, tokenizing,
the byte alignment and the mapping; ``teacher/alignment_seconds``) is measured inside the real cross steps and
reported as a share of the whole optimizer step. The machine is shared (other programs run): absolute times
are context only; the share is measured within the same steps.

    python benchmarks/bench_cross_tokenizer.py --quick   # about 2-4 minutes
    python benchmarks/bench_cross_tokenizer.py           # more rounds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

LENGTHS = {"1k": 1024, "8k": 8192}
FILLER = " First, compute the product → next, add the remainder (café, naïve, 3.5 €)."


class Scripted(C.ScriptedTurns):
    """``ScriptedTurns`` with a filler sized to reach about ``target`` completion tokens over 4 turns."""

    def __init__(self, tok, target: int):
        super().__init__(tok, turns=3, filler=1)
        per_filler = len(tok.encode(FILLER, add_special_tokens=False))
        repeats = max(1, (target - 120) // (4 * per_filler))
        words = FILLER * repeats
        self.texts = []
        for k in range(self.turns):
            code = "print(undefined_name * 7)" if k % 3 == 2 else f"print({123 + k} * {45 + k})"
            self.texts.append(f"Step {k + 1}.{words}\n```python\n{code}\n```")
        self.texts.append(f"The answer is \\boxed{{5535}}.{words}")
        self.ids = [tok.encode(text, add_special_tokens=False) + [tok.eos_token_id] for text in self.texts]


def build(variant: str, length: int, student, teachers, tokenizers, dataset, output_dir: str):
    from sod_trainer import SODConfig, SODTrainer

    args = SODConfig(output_dir=output_dir, per_device_train_batch_size=2, num_generations=2, max_steps=10_000,
                     learning_rate=1e-5, report_to=[], use_cpu=True, save_strategy="no", seed=0, logging_steps=1,
                     disable_tqdm=True, max_completion_length=length + 512, max_prompt_length=None,
                     max_tool_calling_iterations=8)
    tok = tokenizers["shared"]
    trainer = SODTrainer(model=copy.deepcopy(student), teacher_model=copy.deepcopy(teachers[variant]), args=args,
                         train_dataset=dataset, processing_class=tok, environment_factory=C.CalculatorEnvironment,
                         reward_funcs=[C.constant_reward],
                         teacher_processing_class=tokenizers[variant] if variant == "cross" else None)
    trainer.rollout_engine.backend = Scripted(tok, length)
    return trainer


class AlignmentProbe:
    """Records the cross teacher's alignment and scoring seconds of every batch it scores."""

    def __init__(self, teacher):
        self.records: list[dict[str, float]] = []
        original = teacher.score_trajectories

        def probed(*args, **kwargs):
            result = original(*args, **kwargs)
            self.records.append(dict(result.stats))
            return result

        teacher.score_trajectories = probed


def run_length(name: str, length: int, rounds: int, hidden: int) -> dict:
    from sod_trainer.toy.tokenizer import build_tokenizer
    from sod_trainer.teacher_cross import CrossTokenizerTeacher

    tokenizers = {"shared": C.tokenizer(), "cross": build_tokenizer(vocab_size=400, family="header")}
    positions = length + 1024
    student = C.tiny_model(tokenizers["shared"], hidden=hidden, seed=0)
    teachers = {key: C.tiny_model(tok, hidden=hidden, seed=1) for key, tok in tokenizers.items()}
    for model in [student, *teachers.values()]:
        model.config.max_position_embeddings = positions
    dataset = C.prompt_rows(4)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: build(v, length, student, teachers, tokenizers, dataset, tmp) for v in ("shared", "cross")}
        assert isinstance(trainers["cross"].scorer.teacher, CrossTokenizerTeacher)
        probe = AlignmentProbe(trainers["cross"].scorer.teacher)
        steppers = {v: C.ManualStepper(t) for v, t in trainers.items()}
        for stepper in steppers.values():  # warm-up
            stepper.step()
        probe.records.clear()
        times = C.interleave({v: s.step for v, s in steppers.items()}, rounds)
    align = [r["teacher/alignment_seconds"] for r in probe.records]
    scoring = [r["teacher/scoring_seconds"] for r in probe.records]
    shares = [a / t for a, t in zip(align, times["cross"])]
    model_tokens = sum(len(ids) for ids in trainers["cross"].rollout_engine.backend.ids)
    return {
        "length": name, "model_tokens_per_trajectory": model_tokens, "rounds": rounds, "hidden": hidden,
        "step_seconds": {v: C.summary(t) for v, t in times.items()},
        "cross_over_shared": C.paired_ratios(times["cross"], times["shared"]),
        "alignment_seconds": C.summary(align), "teacher_scoring_seconds": C.summary(scoring),
        "alignment_share_of_step": C.summary(shares),
        "unaligned_tokens": statistics.mean(r["teacher/unaligned_tokens"] for r in probe.records),
        "student_tokens_per_span": statistics.mean(r["teacher/student_tokens_per_span"] for r in probe.records),
        "teacher_tokens_per_span": statistics.mean(r["teacher/teacher_tokens_per_span"] for r in probe.records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds per length instead of 8")
    parser.add_argument("--lengths", nargs="+", default=list(LENGTHS), choices=list(LENGTHS))
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny student and teachers")
    args = parser.parse_args()
    rounds = 3 if args.quick else 8
    results = [run_length(name, LENGTHS[name], rounds, args.hidden) for name in args.lengths]
    rows = [[r["length"], r["model_tokens_per_trajectory"], r["step_seconds"]["shared"]["median"],
             r["step_seconds"]["cross"]["median"], r["alignment_seconds"]["median"],
             r["teacher_scoring_seconds"]["median"], f"{100 * r['alignment_share_of_step']['median']:.1f} %",
             r["cross_over_shared"]["median_of_paired_ratios"], r["student_tokens_per_span"],
             r["teacher_tokens_per_span"], r["unaligned_tokens"]] for r in results]
    print("\nA teacher of another tokenizer: the alignment's share of an optimizer step (2 trajectories per step, "
          "tiny models, scripted rollouts; shared machine)")
    print(C.table(rows, ["length", "model tokens / traj.", "step s (shared)", "step s (cross)", "alignment s",
                         "teacher scoring s", "alignment share", "cross / shared", "student tok / span",
                         "teacher tok / span", "unaligned tokens"]))
    C.save("bench_cross_tokenizer", {"results": results, "note": "shared 2-core machine (other programs running)"},
           args.quick)


if __name__ == "__main__":
    main()
