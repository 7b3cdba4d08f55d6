r"""Benchmark loaders: AIME 2024, AIME 2025, GPQA-Diamond, LiveCodeBench v6, MATH-500 (SOD_SPEC §9).

``load_benchmark(name)`` reads the benchmark from the Hugging Face Hub, or ``load_benchmark(name,
path=...)`` from a local JSON / JSONL / Parquet / CSV file (or a folder of them, e.g. a
``hf download --local-dir`` copy). Either way the result is a ``datasets.Dataset`` in one shape:

* ``prompt``: the conversation to send, ``[{"role": "user", "content": ...}]`` (optionally a system
  message first), built with the benchmark's prompt template;
* ``problem_id``, ``benchmark``, ``problem`` (the raw question text);
* math (AIME, MATH-500): ``answer``; GPQA: ``choices`` (shuffled with ``seed``) and ``answer`` (the
  letter); LiveCodeBench: ``tests`` (JSON list of ``{"input", "output", "testtype", "fn_name"}``),
  ``starter_code``.

These columns are what :func:`sod_trainer.rewards.default_reward_funcs` looks for.

The paper names the answer formats (SOD_SPEC §6) but does not print its prompts; the templates (:mod:`sod_trainer.prompts`)
ask for exactly those formats (a final ``\boxed{}``, a boxed letter, a final ```` ```python ```` block)
**[ours]**. Tool-use instructions belong to the system prompt (``system_prompt=``), not here.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import pickle
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..prompts import CODE_STARTER_TEMPLATE, CODE_STDIN_TEMPLATE, MATH_TEMPLATE, MULTIPLE_CHOICE_TEMPLATE

__all__ = [
    "BenchmarkSpec",
    "BenchmarkUnavailableError",
    "BENCHMARKS",
    "MATH_TEMPLATE",
    "MULTIPLE_CHOICE_TEMPLATE",
    "CODE_STDIN_TEMPLATE",
    "CODE_STARTER_TEMPLATE",
    "resolve_benchmark",
    "load_benchmark",
    "read_records",
    "list_benchmarks",
]

class BenchmarkUnavailableError(RuntimeError):
    """The benchmark could not be read (offline, gated, missing file, unknown columns)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives on the Hub and how its rows become prompts."""

    name: str
    title: str
    kind: str  # "math" | "multiple_choice" | "code"
    hub_id: str
    hub_config: str | None = None
    hub_split: str = "test"
    aliases: tuple[str, ...] = ()
    note: str = ""


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec("aime2024", "AIME 2024", "math", "HuggingFaceH4/aime_2024", hub_split="train",
                      aliases=("aime24", "aime_2024", "aime-2024")),
        BenchmarkSpec("aime2025", "AIME 2025", "math", "MathArena/aime_2025", hub_split="train",
                      aliases=("aime25", "aime_2025", "aime-2025")),
        BenchmarkSpec("gpqa_diamond", "GPQA-Diamond", "multiple_choice", "Idavidrein/gpqa", hub_config="gpqa_diamond",
                      hub_split="train", aliases=("gpqa", "gpqa-diamond", "gpqa_d", "gpqad"),
                      note="gated on the Hub: accept its terms and `hf auth login` first"),
        BenchmarkSpec("livecodebench_v6", "LiveCodeBench v6", "code", "lighteval/code_generation_lite",
                      hub_config="v6", hub_split="test",
                      aliases=("lcb", "lcb_v6", "lcb-v6", "livecodebench", "livecodebench-v6", "lcbv6"),
                      note="the problems added in release v6 (2025-02 to 2025-05); pass a file with "
                           "other releases and filter with start_date / end_date"),
        BenchmarkSpec("math500", "MATH-500", "math", "HuggingFaceH4/MATH-500", hub_split="test",
                      aliases=("math-500", "math_500")),
    ]
}


def list_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def resolve_benchmark(name: str) -> BenchmarkSpec:
    """The spec for a benchmark name or alias (case, ``-``/``_``/space insensitive)."""
    key = name.strip().lower().replace(" ", "_")
    for spec in BENCHMARKS.values():
        names = {spec.name, *spec.aliases, spec.title.lower().replace(" ", "_")}
        if key in names or key.replace("-", "_") in {n.replace("-", "_") for n in names}:
            return spec
    raise ValueError(f"Unknown benchmark {name!r}. Known: {', '.join(BENCHMARKS)} (aliases such as "
                     "aime24, gpqa, lcb, math-500 work too).")


# --------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------

_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a local JSON (a list of objects, or ``{"data": [...]}``, or one object per line), JSONL,
    Parquet or CSV file, or of every such file in a folder (sorted, recursive)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise BenchmarkUnavailableError(f"No .json, .jsonl, .parquet or .csv files under {path}.")
        return [row for file in files for row in read_records(file)]
    if not path.exists():
        raise BenchmarkUnavailableError(f"Benchmark file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines under a .json name
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            for key in ("data", "rows", "examples", "test", "train"):
                if isinstance(data.get(key), list):
                    return data[key]
            if data and all(isinstance(v, list) for v in data.values()):  # columns
                length = len(next(iter(data.values())))
                return [{k: v[i] for k, v in data.items()} for i in range(length)]
            return [data]
    if suffix in (".json", ".jsonl"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise BenchmarkUnavailableError(f"{path}, line {number}: not JSON ({error}).") from None
        return rows
    raise BenchmarkUnavailableError(f"Unsupported benchmark file {path}: use .json, .jsonl, .parquet or .csv.")


def _read_hub(spec: BenchmarkSpec, hub_id: str | None, split: str | None) -> list[dict[str, Any]]:
    hub_id = hub_id or spec.hub_id
    config = spec.hub_config if hub_id == spec.hub_id else None
    split = split or spec.hub_split
    how_to = (
        f"To use a local copy, download it on a machine with internet, e.g.\n"
        f"    hf download {hub_id} --repo-type dataset --local-dir ./{spec.name}\n"
        f"and pass the file or folder: load_benchmark({spec.name!r}, path='./{spec.name}') "
        f"or `sod eval --benchmark {spec.name} --benchmark-path ./{spec.name}` (JSON, JSONL, Parquet or CSV)."
        + (f"\nNote: {spec.note}." if spec.note else "")
    )
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise BenchmarkUnavailableError(f"Reading {spec.title} from the Hub needs `datasets`. {how_to}") from error
    try:
        if config:
            dataset = datasets.load_dataset(hub_id, config, split=split)
        else:
            dataset = datasets.load_dataset(hub_id, split=split)
    except Exception as error:  # noqa: BLE001 - offline, gated, renamed: all say the same thing to the user
        offline = _hub_offline()
        reason = "the Hub is switched off here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else \
            f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
        raise BenchmarkUnavailableError(
            f"Could not load {spec.title} from the Hugging Face Hub ({hub_id}"
            f"{', config ' + config if config else ''}, split {split}): {reason}.\n{how_to}"
        ) from error
    return dataset.to_list()


def _hub_offline() -> bool:
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------------------------
# Row conversion
# --------------------------------------------------------------------------------------------


def _field(row: dict[str, Any], names: Sequence[str], what: str, spec: BenchmarkSpec, required: bool = True) -> Any:
    lowered = {key.lower(): key for key in row}
    for name in names:
        key = name if name in row else lowered.get(name.lower())
        if key is not None and row[key] is not None:
            return row[key]
    if required:
        raise BenchmarkUnavailableError(
            f"{spec.title}: a row has no {what} column (looked for {', '.join(names)}); its columns are "
            f"{sorted(row)}. Rename the column or pass the Hub copy."
        )
    return None


_PROBLEM = ("problem", "question", "question_content")
_ANSWER = ("answer", "expected_answer", "ground_truth", "solution_answer", "final_answer")
_ID = ("problem_id", "id", "unique_id", "problem_idx", "question_id", "idx", "record id", "record_id")


def _problem_id(row: dict[str, Any], index: int, spec: BenchmarkSpec) -> str:
    value = _field(row, _ID, "id", spec, required=False)
    return str(value) if value is not None else f"{spec.name}-{index}"


def _math_row(row: dict[str, Any], index: int, spec: BenchmarkSpec, template: str, seed: int) -> dict[str, Any]:
    problem = str(_field(row, _PROBLEM, "problem", spec)).strip()
    answer = _field(row, _ANSWER, "answer", spec)
    return {"problem": problem, "answer": str(answer).strip(), "content": template.format(problem=problem),
            "problem_id": _problem_id(row, index, spec)}


def _multiple_choice_row(row: dict[str, Any], index: int, spec: BenchmarkSpec, template: str, seed: int) -> dict[str, Any]:
    problem = str(_field(row, ("Question", "question", "problem"), "question", spec)).strip()
    if _field(row, ("choices", "options"), "choices", spec, required=False) is not None:
        choices = [str(c).strip() for c in _field(row, ("choices", "options"), "choices", spec)]
        answer = _field(row, ("answer", "correct_letter", "label"), "answer", spec)
        if isinstance(answer, int) and not isinstance(answer, bool):
            letter = chr(ord("A") + answer)
        elif str(answer).strip() in choices and len(str(answer).strip()) > 1:
            letter = chr(ord("A") + choices.index(str(answer).strip()))
        else:
            letter = str(answer).strip().strip("()").upper()
    else:
        correct = str(_field(row, ("Correct Answer", "correct_answer"), "correct answer", spec)).strip()
        wrong = [str(_field(row, (f"Incorrect Answer {i}", f"incorrect_answer_{i}"), f"incorrect answer {i}", spec)).strip()
                 for i in (1, 2, 3)]
        choices = [correct, *wrong]
        # Shuffle per problem, reproducibly: the same seed always gives the same letters.
        random.Random(f"{seed}:{_problem_id(row, index, spec)}:{problem[:64]}").shuffle(choices)
        letter = chr(ord("A") + choices.index(correct))
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    choice_text = "\n".join(f"{l}) {c}" for l, c in zip(letters, choices))
    letters_text = ", ".join(letters[:-1]) + " or " + letters[-1] if len(letters) > 1 else letters[0]
    content = template.format(problem=problem, choices=choice_text, letters=letters_text)
    return {"problem": problem, "choices": choices, "answer": letter, "content": content,
            "problem_id": _problem_id(row, index, spec)}


class _StringsOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench stores private tests as base64(zlib(pickle(json string))); refuse anything but plain data."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from benchmark test data")


def decode_livecodebench_tests(value: Any) -> list[dict[str, Any]]:
    """Public or private LiveCodeBench tests: a JSON string, a list, or base64+zlib+pickle of a JSON string."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            raw = zlib.decompress(base64.b64decode(value.encode("utf-8")))
            decoded = _StringsOnlyUnpickler(io.BytesIO(raw)).load()
            if isinstance(decoded, (str, bytes)):
                decoded = json.loads(decoded)
        return decoded if isinstance(decoded, list) else [decoded]
    raise ValueError(f"Unrecognized test cases of type {type(value).__name__}.")


def _code_row(row: dict[str, Any], index: int, spec: BenchmarkSpec, template: str | tuple[str, str], seed: int) -> dict[str, Any]:
    problem = str(_field(row, ("question_content", "problem", "question", "description"), "problem", spec)).strip()
    starter = str(_field(row, ("starter_code",), "starter code", spec, required=False) or "").strip()
    metadata = _field(row, ("metadata",), "metadata", spec, required=False) or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata) if metadata.strip() else {}
        except json.JSONDecodeError:
            metadata = {}
    fn_name = metadata.get("func_name") or _field(row, ("fn_name", "func_name"), "fn_name", spec, required=False)
    existing = _field(row, ("tests",), "tests", spec, required=False)
    if existing is not None:
        from .rewards import parse_tests

        parsed = parse_tests(existing)
        tests = [{"input": t.input, "output": t.output, "testtype": t.kind, "fn_name": t.fn_name or fn_name}
                 for t in parsed]
    else:
        raw = decode_livecodebench_tests(_field(row, ("public_test_cases",), "public_test_cases", spec))
        raw += decode_livecodebench_tests(_field(row, ("private_test_cases",), "private_test_cases", spec, required=False))
        tests = [{"input": t["input"], "output": t["output"], "testtype": t.get("testtype", "stdin"),
                  "fn_name": fn_name if t.get("testtype") == "functional" else None} for t in raw]
    if not tests:
        raise BenchmarkUnavailableError(f"{spec.title}: problem {_problem_id(row, index, spec)} has no tests.")
    stdin_template, starter_template = template if isinstance(template, tuple) else (template, template)
    content = (starter_template if starter else stdin_template).format(problem=problem, starter_code=starter)
    return {"problem": problem, "tests": json.dumps(tests), "starter_code": starter, "content": content,
            "problem_id": _problem_id(row, index, spec),
            "contest_date": str(_field(row, ("contest_date", "date"), "date", spec, required=False) or "")}


_CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "math": _math_row, "multiple_choice": _multiple_choice_row, "code": _code_row,
}
_DEFAULT_TEMPLATES: dict[str, Any] = {
    "math": MATH_TEMPLATE, "multiple_choice": MULTIPLE_CHOICE_TEMPLATE,
    "code": (CODE_STDIN_TEMPLATE, CODE_STARTER_TEMPLATE),
}


def load_benchmark(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    hub_id: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    prompt_template: str | tuple[str, str] | None = None,
    system_prompt: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
):
    """Load a benchmark as a ``datasets.Dataset`` of prompts and references (see the module docstring).

    ``path``: a local file or folder instead of the Hub. ``hub_id`` / ``split``: another Hub copy.
    ``limit``: the first ``limit`` problems. ``seed``: GPQA's choice order. ``prompt_template``: a
    ``str.format`` template with ``{problem}`` (and ``{choices}``, ``{letters}`` for multiple choice,
    ``{starter_code}`` for code; a code benchmark takes a pair: without / with starter code).
    ``start_date`` / ``end_date`` (``YYYY-MM-DD``, inclusive): LiveCodeBench contest window.
    Raises :class:`BenchmarkUnavailableError` with instructions when the data cannot be read.
    """
    from datasets import Dataset

    spec = resolve_benchmark(name)
    rows = read_records(path) if path is not None else _read_hub(spec, hub_id, split)
    template = prompt_template if prompt_template is not None else _DEFAULT_TEMPLATES[spec.kind]
    converted = []
    for index, row in enumerate(rows):
        item = _CONVERTERS[spec.kind](row, index, spec, template, seed)
        if spec.kind == "code" and (start_date or end_date):
            date = item["contest_date"][:10]
            if not date or (start_date and date < start_date) or (end_date and date > end_date):
                continue
        content = item.pop("content")
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": "user", "content": content}]
        converted.append({"prompt": messages, "benchmark": spec.name, **item})
        if limit is not None and len(converted) >= limit:
            break
    if not converted:
        raise BenchmarkUnavailableError(f"{spec.title}: no problems left to evaluate (source "
                                        f"{path or hub_id or spec.hub_id}, dates {start_date}..{end_date}).")
    return Dataset.from_list(converted)
