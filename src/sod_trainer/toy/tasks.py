"""Multi-step arithmetic word problems that need the Python tool, with reference tool-use trajectories.

A problem is a short story of 2-4 dependent steps: a start value (a 3-4 digit x 2 digit product or a
sum of two 4-5 digit numbers), then operations with literals from the story (add, subtract, multiply
by a digit, share equally = floor division, leftovers = modulo). The numbers are too long for a tiny
model to compute "in its head", so it must call the tool once per step, copy the printed value into
the next call, and finally write the answer in ``\\boxed{}``.

The world is built so that SOD's failure mode can appear (SOD_SPEC §1):

* the tool is stateless (a fresh process per call), and the reference code often names values with
  variables, re-using a name of the previous turn. A student that assumes a notebook-like tool writes
  ``left = total - 789`` without defining ``total`` and gets a ``NameError`` traceback back;
* the teacher is trained on clean trajectories only (:func:`reference_messages` with
  ``lazy_error=False``): it never saw a traceback, so after one its token-level signal is unreliable;
* the cold-start student's data (:func:`student_sft_messages`) contains a few trajectories that make
  that error and then retry, so the student makes real tool errors and sometimes recovers;
* phrasing and code style vary per step, so the first step's divergence ``d_1`` is not near zero.

Everything is deterministic given a seed.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SYSTEM_PROMPT",
    "Step",
    "Problem",
    "generate_problem",
    "generate_problems",
    "reference_messages",
    "student_sft_messages",
    "build_dataset",
    "build_rows",
    "tokenizer_corpus",
    "build_toy_tokenizer",
    "load_toy_tokenizer",
    "extract_boxed",
    "toy_reward",
    "TRANSIENT_ERROR",
    "TRAIN_SEED_BASE",
    "EVAL_SEED_BASE",
]

SYSTEM_PROMPT = (
    "Solve the problem with the python tool. Each ```python block runs in a new process and its "
    "output is shown to you. Put the final answer in \\boxed{}."
)

# What a flaky tool returns (see sod_trainer.toy.environment): the code did not run; run it again.
TRANSIENT_ERROR = (
    "Traceback (most recent call last):\n  File \"tool_server.py\", line 88, in execute\n"
    "RuntimeError: the code server is busy; the code was not run. Try again."
)

# Held-out problems come from a disjoint range of seeds.
TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 10_000_000

NAMES = ["Ava", "Ben", "Chen", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
         "Mia", "Noor", "Omar", "Pia", "Ravi", "Sara", "Tom", "Uma"]
ITEMS = ["apples", "coins", "books", "stamps", "marbles", "cards", "bottles", "pencils", "tickets", "shells",
         "bricks", "seeds", "buttons", "candles", "cookies", "nails"]
VARIABLES = ["total", "count", "value", "amount", "result", "n", "x", "y", "stock", "left", "share", "rest",
             "items", "num", "acc", "s"]

_START_TEXT = {
    "mul": [
        "{name} has {a} boxes with {b} {item} in each.",
        "{name} buys {a} packs of {item}, and every pack holds {b}.",
        "There are {a} crates, each with {b} {item}.",
        "A shop gets {a} bags of {item}; each bag has {b}.",
    ],
    "add": [
        "{name} has {a} {item} and finds {b} more.",
        "A shop stocks {a} {item} and then receives {b} more.",
        "{name} collects {a} {item} in May and {b} in June.",
    ],
}
_NEXT_TEXT = {
    "add": ["Then {c} more {item} arrive.", "Later {name} gets another {c}.", "Next, {c} {item} are added."],
    "sub": ["Then {c} {item} are given away.", "{name} sells {c} of them.", "After that, {c} are lost."],
    "mul": ["Then the number of {item} grows {c} times.", "Each one is then swapped for {c} new ones."],
    "div": ["They are shared equally among {c} friends and one share is kept.",
            "The {item} are split into {c} equal groups; {name} keeps one group."],
    "mod": ["Then they are packed in bags of {c} and only the leftovers are kept.",
            "{name} fills bags of {c}; the full bags are sold and the rest stay."],
}
_QUESTION = ["How many {item} are there at the end?", "How many {item} does {name} have in the end?",
             "What is the final number of {item}?"]

_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "//", "mod": "%"}
_START_SAY = {
    "mul": ["First I multiply {a} by {b}.", "Let me compute {a} times {b}.", "Start with {a} * {b}.",
            "The first value is the product of {a} and {b}."],
    "add": ["First I add {a} and {b}.", "Let me compute {a} plus {b}.", "Start with {a} + {b}.",
            "The first value is the sum of {a} and {b}."],
}
_NEXT_SAY = {
    "add": ["Now add {c} to {v}.", "Next, {v} plus {c}.", "Add {c}."],
    "sub": ["Now subtract {c} from {v}.", "Next, {v} minus {c}.", "Take away {c}."],
    "mul": ["Now multiply {v} by {c}.", "Next, {v} times {c}.", "Multiply by {c}."],
    "div": ["Now divide {v} by {c}, rounding down.", "Next, {v} // {c}.", "Share: {v} // {c}."],
    "mod": ["Now take {v} modulo {c}.", "Next, the leftovers of {v} in bags of {c}.", "Leftovers: {v} % {c}."],
}
_GOT = ["The tool printed {v}.", "That gives {v}.", "So the value is {v}.", "", ""]
_FINAL = ["The answer is \\boxed{{{v}}}.", "So the final count is \\boxed{{{v}}}.", "\\boxed{{{v}}}",
          "That leaves \\boxed{{{v}}}."]
_RETRY_TRANSIENT = ["The tool was busy. I run the same code again.", "The code did not run; trying again.",
                    "Busy server, so I send the code once more."]
_RETRY = ["The tool does not keep variables between calls, so I write the value {v} again.",
          "{name_error} Each call is a new process; I use the printed value {v}.",
          "Oops, the variable is gone. Again with {v}."]


@dataclass
class Step:
    """One tool step: ``op`` applied to the running value (``a``, ``b`` for the start step, else ``c``)."""

    op: str
    operands: tuple[int, ...]
    value: int  # the value after this step


@dataclass
class Problem:
    """A word problem: its text, its steps, the answer, and the seed it was generated from."""

    seed: int
    question: str
    steps: list[Step]
    answer: int
    name: str
    item: str
    meta: dict[str, Any] = field(default_factory=dict)

    def prompt(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.question}]


def generate_problem(seed: int, min_steps: int = 2, max_steps: int = 4) -> Problem:
    """The problem of ``seed``: 2-4 dependent steps (start step included), deterministic."""
    rng = random.Random(seed)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    num_steps = rng.randint(min_steps, max_steps)
    if rng.random() < 0.6:
        a, b = rng.randint(100, 9999), rng.randint(11, 99)
        start = Step("mul", (a, b), a * b)
    else:
        a, b = rng.randint(1000, 99999), rng.randint(1000, 99999)
        start = Step("add", (a, b), a + b)
    sentences = [rng.choice(_START_TEXT[start.op]).format(name=name, item=item, a=a, b=b)]
    steps = [start]
    value = start.value
    for _ in range(num_steps - 1):
        choices = ["add", "sub", "div", "mod"] + (["mul"] if value < 200_000 else [])
        if value < 1000:
            choices = ["add", "mul"]
        op = rng.choice(choices)
        if op == "add":
            c = rng.randint(100, 9999)
            value = value + c
        elif op == "sub":
            c = rng.randint(100, min(9999, value - 1))
            value = value - c
        elif op == "mul":
            c = rng.randint(2, 9)
            value = value * c
        elif op == "div":
            c = rng.randint(2, 19)
            value = value // c
        else:
            c = rng.randint(30, 99)
            value = value % c
        steps.append(Step(op, (c,), value))
        sentences.append(rng.choice(_NEXT_TEXT[op]).format(name=name, item=item, c=c))
    sentences.append(rng.choice(_QUESTION).format(name=name, item=item))
    return Problem(seed=seed, question=" ".join(sentences), steps=steps, answer=value, name=name, item=item)


def generate_problems(n: int, seed: int = 0, split: str = "train") -> list[Problem]:
    """``n`` problems; ``split='eval'`` draws from a seed range disjoint from ``'train'``."""
    base = EVAL_SEED_BASE if split == "eval" else TRAIN_SEED_BASE
    return [generate_problem(base + seed * 1_000_003 + i) for i in range(n)]


def _code(rng: random.Random, left: str, op: str, right: int, previous_var: str | None) -> tuple[str, str | None]:
    """Python code computing ``left op right`` in a random style; returns (code, name of the result or None)."""
    sym = _OP_SYMBOL[op]
    style = rng.choice(["print", "bare", "two_vars", "one_var", "one_var_bare"])
    if style == "print":
        return f"print({left} {sym} {right})", None
    if style == "bare":
        return f"{left} {sym} {right}", None
    out = rng.choice(VARIABLES)
    if style == "two_vars":
        # re-using the previous turn's name for the input is the trap of a stateless tool
        first = previous_var if previous_var and rng.random() < 0.6 else rng.choice(VARIABLES)
        if first == out:
            out = out + "2"
        return f"{first} = {left}\n{out} = {first} {sym} {right}\nprint({out})", out
    if style == "one_var":
        return f"{out} = {left} {sym} {right}\nprint({out})", out
    return f"{out} = {left} {sym} {right}\n{out}", out


@functools.lru_cache(maxsize=4096)
def tool_output(code: str) -> str:
    """What the real Python tool shows for ``code`` (used for the error observations of the references)."""
    from ..environments.sandbox import PythonSandbox

    return PythonSandbox().run(code).observation(256) or "(no output)"


def _turn(say: str, code: str) -> str:
    return f"{say}\n```python\n{code}\n```"


def reference_messages(problem: Problem, seed: int | None = None, lazy_error: bool = False,
                       transient_error: bool = False) -> list[dict[str, str]]:
    """A correct multi-turn trajectory (assistant / tool / ... / final assistant) for ``problem``.

    ``lazy_error=True`` (student cold-start data only): at a step whose previous turn defined a
    variable, the first attempt uses that variable without defining it, the tool answers with a
    ``NameError`` traceback, and the next turn retries with the printed value.
    ``transient_error=True`` (student data, flaky tool): one call gets :data:`TRANSIENT_ERROR` back and
    the next turn sends the same code again.
    """
    rng = random.Random(problem.seed * 7 + 1 if seed is None else seed)
    flaky_at = random.Random(problem.seed * 11 + 3).randrange(len(problem.steps)) if transient_error else None
    messages: list[dict[str, str]] = []

    def call(text: str, code: str, observation: str, k: int) -> None:
        if k == flaky_at:
            messages.append({"role": "assistant", "content": _turn(text, code)})
            messages.append({"role": "tool", "content": TRANSIENT_ERROR})
            text = rng.choice(_RETRY_TRANSIENT)
        messages.append({"role": "assistant", "content": _turn(text, code)})
        messages.append({"role": "tool", "content": observation})

    start = problem.steps[0]
    a, b = start.operands
    say = rng.choice(_START_SAY[start.op]).format(a=a, b=b)
    code, var = _code(rng, str(a), start.op, b, None)
    call(say, code, str(start.value), 0)
    previous_value, previous_var = start.value, var
    error_at = None
    if lazy_error:
        candidates = [k for k in range(1, len(problem.steps))]
        error_at = rng.choice(candidates) if candidates else None
    for k, step in enumerate(problem.steps[1:], start=1):
        c = step.operands[0]
        template = rng.choice(_NEXT_SAY[step.op])
        say = template.format(v=previous_value, c=c)
        got = "" if "{v}" in template else rng.choice(_GOT).format(v=previous_value)
        text = f"{got} {say}".strip()
        if k == error_at:
            stale = previous_var or rng.choice(VARIABLES)
            out = rng.choice([v for v in VARIABLES if v != stale])
            bad = f"{out} = {stale} {_OP_SYMBOL[step.op]} {c}\nprint({out})"
            error = tool_output(bad)
            messages += [{"role": "assistant", "content": _turn(text, bad)}, {"role": "tool", "content": error}]
            text = rng.choice(_RETRY).format(v=previous_value, name_error=f"{stale} is not defined.")
            code, var = _code(rng, str(previous_value), step.op, c, None)
        else:
            code, var = _code(rng, str(previous_value), step.op, c, previous_var)
        call(text, code, str(step.value), k)
        previous_value, previous_var = step.value, var
    got = rng.choice(_GOT).format(v=previous_value)
    final = rng.choice(_FINAL).format(v=problem.answer)
    messages.append({"role": "assistant", "content": f"{got} {final}".strip()})
    return messages


def student_sft_messages(problem: Problem, seed: int | None = None, lazy_error_rate: float = 0.3,
                         transient_error_rate: float = 0.0) -> list[dict]:
    """Cold-start data for the student: like the teacher's, but a share of trajectories err and retry."""
    rng = random.Random(problem.seed * 13 + 5 if seed is None else seed)
    lazy = rng.random() < lazy_error_rate
    transient = rng.random() < transient_error_rate
    return reference_messages(problem, seed=seed, lazy_error=lazy, transient_error=transient)


def build_rows(n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """Dataset rows as plain dicts: ``prompt`` (system + user messages), ``answer`` (str), ``num_steps``."""
    return [{"prompt": p.prompt(), "answer": str(p.answer), "num_steps": len(p.steps)}
            for p in generate_problems(n, seed=seed, split=split)]


def build_dataset(n: int, seed: int = 0, split: str = "train"):
    """A ``datasets.Dataset`` of :func:`build_rows` (``prompt``, ``answer``, ``num_steps`` columns)."""
    from datasets import Dataset

    return Dataset.from_list(build_rows(n, seed=seed, split=split))


def tokenizer_corpus(n: int = 300) -> list[str]:
    """Deterministic texts of the world (prompts and both kinds of trajectories) to train the BPE on."""
    texts = []
    for problem in generate_problems(n, seed=424242):
        texts.append(SYSTEM_PROMPT + "\n" + problem.question)
        for message in student_sft_messages(problem, lazy_error_rate=0.5):
            texts.append(message["content"])
    return texts


def build_toy_tokenizer():
    """The toy world's tokenizer: :func:`~sod_trainer.toy.build_tokenizer` trained on this world's text."""
    from .tokenizer import build_tokenizer

    return build_tokenizer(corpus=tokenizer_corpus(), vocab_size=768)


def load_toy_tokenizer(path=None):
    """The tokenizer saved next to a teacher (default: the shipped one), else :func:`build_toy_tokenizer`.

    A teacher's token ids only mean something with the tokenizer it was trained with, so load that one.
    """
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast

    from .tokenizer import CHATML_TEMPLATE

    path = Path(path) if path is not None else Path(__file__).parent / "assets" / "teacher"
    if not (path / "tokenizer.json").exists():
        return build_toy_tokenizer()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer.chat_template = tokenizer.chat_template or CHATML_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in the last 300 characters, or None."""
    found = _BOXED.findall(text[-300:])
    return found[-1].strip() if found else None


def _normalize(answer: str) -> str:
    answer = answer.replace(",", "").replace(" ", "").strip()
    try:
        return str(int(float(answer))) if re.fullmatch(r"-?\d+(\.0*)?", answer) else answer
    except ValueError:
        return answer


def toy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL-style reward: +1 if the last ``\\boxed{}`` equals ``answer``, else -1 (SOD_SPEC §6)."""
    rewards = []
    for completion, expected in zip(completions, answer):
        if isinstance(completion, list):  # conversational: the last assistant message
            texts = [m.get("content", "") for m in completion if m.get("role") == "assistant"]
            completion = texts[-1] if texts else ""
        got = extract_boxed(completion or "")
        rewards.append(1.0 if got is not None and _normalize(got) == _normalize(str(expected)) else -1.0)
    return rewards
