"""Datasets to prompts: loading (local files or the Hub), adapters, prompt templates, prompt token ids.

A training row needs a prompt, in one of three shapes:

* ``prompt``: a string or a list of chat messages (TRL's prompt-only conversational format);
* ``messages``: a conversation; trailing assistant messages (a reference answer) are dropped;
* ``problem`` / ``question`` (+ ``answer``, ``choices`` or ``tests``): plain text, which
  :func:`prepare_dataset` renders with the math, multiple-choice or code template.

verl-style rows (``prompt`` + ``reward_model: {"ground_truth": ...}``) get an ``answer`` column.
Every other column is kept: it reaches the reward functions (as keyword arguments) and
``ToolEnvironment.reset(**row)``. A row that cannot be used raises :class:`DatasetRowError`
naming the row index and the column.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .prompts import CODE_STARTER_TEMPLATE, CODE_STDIN_TEMPLATE, MATH_TEMPLATE, MULTIPLE_CHOICE_TEMPLATE, TOOL_SYSTEM_PROMPT

__all__ = [
    "DatasetRowError",
    "row_to_messages",
    "encode_prompt",
    "TOOL_SYSTEM_PROMPT",
    "PROMPT_TEMPLATES",
    "LOCAL_DATA_FORMATS",
    "load_prompt_dataset",
    "prepare_dataset",
    "render_prompt",
    "infer_prompt_template",
    "validate_dataset",
]

logger = logging.getLogger(__name__)

PROMPT_COLUMNS = ("prompt", "messages", "problem", "question")


class DatasetRowError(ValueError):
    """A dataset row that cannot be turned into a prompt; the message names the row and the column."""


def row_to_messages(row: dict[str, Any], index: int | None = None, extra_text: str | None = None,
                    environment_prompt: bool = False) -> list[dict]:
    """The chat messages of a row's prompt (``extra_text`` from ``ToolEnvironment.reset`` is appended).

    ``environment_prompt``: a TRL-style environment owns the data (as in TRL, a row may then have no prompt, or an
    empty one: its ``reset`` returns the text); such a row gets an empty user message."""
    where = f"row {index}" if index is not None else "a row"
    if environment_prompt and all(row.get(column) is None for column in PROMPT_COLUMNS):
        row = {**row, "prompt": [{"role": "user", "content": ""}]}
    if "prompt" in row and row["prompt"] is not None:
        prompt = row["prompt"]
        if not isinstance(prompt, (str, list, tuple)):
            raise DatasetRowError(
                f"Dataset {where}: column 'prompt' must be a string or a list of chat messages like "
                f"{{'role': 'user', 'content': '...'}}, got {prompt!r:.80} (type {type(prompt).__name__})."
            )
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        column = "prompt"
    elif "messages" in row and row["messages"] is not None:
        if not isinstance(row["messages"], (list, tuple)):
            value = row["messages"]
            raise DatasetRowError(
                f"Dataset {where}: column 'messages' must be a list of chat messages like "
                f"{{'role': 'user', 'content': '...'}}, got {value!r:.80} (type {type(value).__name__})."
            )
        messages = list(row["messages"])
        while messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages.pop()  # the reference answer is not part of the prompt
        column = "messages"
    else:
        column = next((c for c in ("problem", "question") if isinstance(row.get(c), str)), None)
        column = column or next((c for c in ("problem", "question")
                                 if row.get(c) is not None and row.get(c) == row.get(c)), None)  # not None or NaN
        if column is None:
            raise DatasetRowError(
                f"Dataset {where} has none of the prompt columns {PROMPT_COLUMNS} (it has {sorted(row)}). "
                "Add a 'prompt' column (a string or a list of chat messages) or a 'problem' column."
            )
        if not isinstance(row[column], str):
            raise DatasetRowError(
                f"Dataset {where}: column {column!r} must be a string, got {row[column]!r:.80} "
                f"(type {type(row[column]).__name__}). Convert it, e.g. dataset.map(lambda row: "
                f"{{{column!r}: str(row[{column!r}])}})."
            )
        messages = [{"role": "user", "content": row[column]}]
    if not messages:
        raise DatasetRowError(f"Dataset {where}: column {column!r} is empty. Give it a user message, or filter the "
                              "row out (dataset.filter(...)).")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or not isinstance(message.get("content"), str):
            raise DatasetRowError(
                f"Dataset {where}: column {column!r} must hold chat messages like "
                f"{{'role': 'user', 'content': '...'}}, got {message!r:.120}."
            )
    if not environment_prompt and not any(m["content"].strip() for m in messages):
        raise DatasetRowError(f"Dataset {where}: the prompt in column {column!r} is empty (only whitespace). Fill it "
                              "in, or filter the row out (dataset.filter(...)).")
    if extra_text:
        messages = [dict(m) for m in messages]
        messages[-1]["content"] = messages[-1]["content"] + extra_text
    return messages


def encode_prompt(
    tokenizer,
    messages: list[dict],
    *,
    max_prompt_length: int | None,
    truncation: str = "error",
    index: int | None = None,
    chat_template_kwargs: dict | None = None,
    tools: list | None = None,
    chat_template: str | None = None,
) -> list[int]:
    """Token ids of the chat-templated prompt with the generation prompt; length checked or left-truncated.
    ``tools`` (function tools, rendered by the template as TRL renders them) and ``chat_template`` (instead of the
    tokenizer's) come from a TRL-style environment."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "The tokenizer has no chat template. Set `processing_class.chat_template` (e.g. copy one from the "
            "model family's instruct tokenizer) before training."
        )
    extra = {"tools": tools} if tools else {}
    if chat_template is not None:
        extra["chat_template"] = chat_template
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **extra, **(chat_template_kwargs or {}))
    ids = tokenizer.encode(text, add_special_tokens=False)
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        if truncation == "left":
            return ids[-max_prompt_length:]
        where = f"row {index}" if index is not None else "a row"
        raise DatasetRowError(
            f"Dataset {where}: the prompt has {len(ids)} tokens, more than max_prompt_length={max_prompt_length}. "
            "Raise max_prompt_length, filter long prompts, or set prompt_truncation='left'."
        )
    return ids


# --------------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------------

PROMPT_TEMPLATES: dict[str, str] = {
    "math": MATH_TEMPLATE,
    "multiple_choice": MULTIPLE_CHOICE_TEMPLATE,
    "code": CODE_STDIN_TEMPLATE,
    "code_starter": CODE_STARTER_TEMPLATE,
}
"""``str.format`` templates by kind: ``math`` (``{problem}``), ``multiple_choice`` (``{problem}``,
``{choices}``, ``{letters}``), ``code`` (``{problem}``), ``code_starter`` (``{problem}``, ``{starter_code}``).
They are the evaluation benchmarks' templates (:mod:`sod_trainer.prompts`, shared with :mod:`sod_trainer.evaluation.benchmarks`), so a student is trained
on the prompts it is evaluated with. The paper names its answer formats but does not print its prompts
**[ours]**."""

TEMPLATE_KINDS = ("auto", "math", "multiple_choice", "code", "none")
_CHOICE_COLUMNS = ("choices", "options")
_TEST_COLUMNS = ("tests", "test_cases", "input_output")


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple, dict)):
        return len(value) > 0
    return True


def infer_prompt_template(row: dict[str, Any]) -> str:
    """The template kind for a plain row: ``code`` if it has tests, ``multiple_choice`` if it has choices,
    else ``math``."""
    if any(_present(row.get(column)) for column in _TEST_COLUMNS):
        return "code"
    if any(_present(row.get(column)) for column in _CHOICE_COLUMNS):
        return "multiple_choice"
    return "math"


def _letters_text(letters: Sequence[str]) -> str:
    return ", ".join(letters[:-1]) + " or " + letters[-1] if len(letters) > 1 else letters[0]


def render_prompt(
    row: dict[str, Any],
    template: str = "auto",
    *,
    index: int | None = None,
    system_prompt: str | None = TOOL_SYSTEM_PROMPT,
    templates: dict[str, str] | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Chat messages for a plain ``problem``/``question`` row, and the columns to update.

    ``template``: ``auto`` (see :func:`infer_prompt_template`), ``math``, ``multiple_choice`` or ``code``.
    For multiple choice, an integer answer (an option index) or an answer equal to an option's text is
    turned into the option's letter. Raises :class:`DatasetRowError` naming the row and column.
    """
    where = f"row {index}" if index is not None else "a row"
    templates = templates if templates is not None else PROMPT_TEMPLATES
    column = next((c for c in ("problem", "question") if c in row and row[c] is not None), None)
    if column is None:
        raise DatasetRowError(
            f"Dataset {where} has none of the prompt columns {PROMPT_COLUMNS} (it has {sorted(row)}). "
            "Add a 'prompt' column (a string or a list of chat messages) or a 'problem' column."
        )
    problem = row[column]
    if not isinstance(problem, str) or not problem.strip():
        raise DatasetRowError(f"Dataset {where}: column {column!r} must be a non-empty string, got {problem!r:.80}.")
    kind = infer_prompt_template(row) if template == "auto" else template
    updates: dict[str, Any] = {}
    if kind == "math":
        content = templates["math"].format(problem=problem.strip())
    elif kind == "multiple_choice":
        choice_column = next((c for c in _CHOICE_COLUMNS if c in row), None)
        choices = row.get(choice_column) if choice_column else None
        if isinstance(choices, dict):  # {"A": "...", "B": "..."}
            choices = [choices[key] for key in sorted(choices)]
        if not isinstance(choices, (list, tuple)) or len(choices) < 2 or not all(
                isinstance(c, (str, int, float)) for c in choices):
            raise DatasetRowError(
                f"Dataset {where}: column {choice_column or 'choices'!r} must be a list of at least two options "
                f"for a multiple-choice prompt, got {choices!r:.120}."
            )
        choices = [str(c).strip() for c in choices]
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        choice_text = "\n".join(f"{letter}) {choice}" for letter, choice in zip(letters, choices))
        content = templates["multiple_choice"].format(problem=problem.strip(), choices=choice_text,
                                                      letters=_letters_text(letters))
        answer = row.get("answer")
        if isinstance(answer, int) and not isinstance(answer, bool):
            if not 0 <= answer < len(choices):
                raise DatasetRowError(f"Dataset {where}: column 'answer' is option index {answer}, but there are "
                                      f"only {len(choices)} options.")
            updates["answer"] = letters[answer]
        elif isinstance(answer, str) and len(answer.strip()) > 1 and answer.strip() in choices:
            updates["answer"] = letters[choices.index(answer.strip())]
        updates["choices"] = choices
    elif kind == "code":
        starter = row.get("starter_code")
        if isinstance(starter, str) and starter.strip() and "code_starter" in templates:
            content = templates["code_starter"].format(problem=problem.strip(), starter_code=starter.rstrip())
        else:
            content = templates["code"].format(problem=problem.strip())
    else:
        raise ValueError(f"Unknown prompt template {template!r}; choose one of {TEMPLATE_KINDS}.")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": content}]
    return messages, updates


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

LOCAL_DATA_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def load_prompt_dataset(
    name_or_path: str,
    *,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    data_files: str | list[str] | dict | None = None,
    streaming: bool = False,
):
    """A ``datasets.Dataset`` from a local file (``.json``, ``.jsonl``, ``.parquet``, ``.csv``), a local
    folder (a saved dataset, or data files named by split: ``train.jsonl``, ``test.jsonl``, ...) or a
    Hugging Face Hub id (``config``, ``split``, ``revision`` as in ``datasets.load_dataset``)."""
    import datasets

    path = Path(name_or_path).expanduser()
    if path.is_file():
        builder = LOCAL_DATA_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"Unsupported data file {path}: use one of {sorted(LOCAL_DATA_FORMATS)}, or a Hub id.")
        # One file is one split: it is returned whatever `split` says.
        return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"The dataset saved at {path} has splits {list(loaded)}, not {split!r}.")
            return loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name_or_path, config, split=split, revision=revision, data_files=data_files,
                                     streaming=streaming)
    except (FileNotFoundError, ConnectionError) as error:
        raise FileNotFoundError(
            f"Could not load the dataset {name_or_path!r} (split {split!r}): it is not a local file or folder, and "
            f"the Hugging Face Hub could not provide it ({type(error).__name__}: {error}). Check the path, the "
            "Hub id and the split name; offline, pass a local file or folder (HF_HUB_OFFLINE is "
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')})."
        ) from error
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"Dataset {name_or_path!r} has no split {split!r}: {error}") from error
        raise


# --------------------------------------------------------------------------------------------
# Adapters and validation
# --------------------------------------------------------------------------------------------


def _verl_answer(row: dict[str, Any], index: int) -> Any:
    reward_model = row.get("reward_model")
    if isinstance(reward_model, str):
        try:
            reward_model = json.loads(reward_model)
        except json.JSONDecodeError:
            return reward_model
    if isinstance(reward_model, dict):
        if "ground_truth" not in reward_model:
            raise DatasetRowError(f"Dataset row {index}: column 'reward_model' has no 'ground_truth' "
                                  f"(keys {sorted(reward_model)}).")
        return reward_model["ground_truth"]
    raise DatasetRowError(f"Dataset row {index}: column 'reward_model' must be a dict with 'ground_truth', "
                          f"got {reward_model!r:.80}.")


def validate_dataset(dataset, *, limit: int | None = None) -> None:
    """Check that every row (or the first ``limit``) yields a prompt; raise :class:`DatasetRowError`
    naming the first bad row's index and column."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        row_to_messages(dataset[index], index)


def prepare_dataset(
    dataset,
    *,
    template: str = "auto",
    system_prompt: str | None = TOOL_SYSTEM_PROMPT,
    max_samples: int | None = None,
    validate: bool = True,
):
    """Make every row trainable: a ``prompt`` column, an ``answer`` when the reference is elsewhere.

    * ``prompt`` or ``messages`` rows are kept as they are (they already are prompts);
    * verl-style rows with ``reward_model.ground_truth`` and no ``answer`` get ``answer``;
    * ``problem``/``question`` rows get a ``prompt`` rendered with ``template`` (see :func:`render_prompt`)
      and ``system_prompt``; ``template="none"`` sends the text as it is.

    ``max_samples`` keeps the first rows. ``validate`` checks every row and raises
    :class:`DatasetRowError` naming the first bad row and column. Extra columns are kept.
    """
    if template not in TEMPLATE_KINDS:
        raise ValueError(f"Unknown prompt template {template!r}; choose one of {TEMPLATE_KINDS}.")
    if not hasattr(dataset, "__len__"):
        raise TypeError("SOD training needs a map-style dataset (not streaming): its rows are sampled "
                        "num_generations times each. Load it without streaming=True.")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    columns = set(dataset.column_names)
    if "reward_model" in columns and "answer" not in columns:
        answers = [_verl_answer(row, index) for index, row in enumerate(dataset.select_columns(["reward_model"]))]
        dataset = dataset.add_column("answer", [a if isinstance(a, str) else json.dumps(a) for a in answers])
        columns.add("answer")
    if not columns & {"prompt", "messages"} and columns & {"problem", "question"}:
        prompts, updates = [], {"answer": {}, "choices": {}}
        for index, row in enumerate(dataset):
            if template == "none":
                messages, changed = row_to_messages(row, index), {}
                if system_prompt:
                    messages = [{"role": "system", "content": system_prompt}, *messages]
            else:
                messages, changed = render_prompt(row, template, index=index, system_prompt=system_prompt)
            prompts.append(messages)
            for key, value in changed.items():
                updates[key][index] = value
        dataset = dataset.add_column("prompt", prompts)
        for column, changed in updates.items():
            source = column if column in dataset.column_names else None
            if column == "choices" and source is None and "options" in dataset.column_names:
                source = "options"
            if not changed or source is None:
                continue
            values = [changed.get(i, value) for i, value in enumerate(dataset[source])]
            if column == "answer" and len({type(v) for v in values if v is not None}) > 1:
                values = [None if v is None else str(v) for v in values]
            dataset = dataset.remove_columns(source).add_column(source, values)
    if validate:
        validate_dataset(dataset)
    return dataset
