"""Checks run when a trainer is built, so that bad set-ups fail early with a message that names the fix."""

from __future__ import annotations

__all__ = ["check_chat_template", "validate_prompts", "validate_reward_columns", "validate_reward_signatures"]


def check_chat_template(tokenizer, chat_template_kwargs: dict | None = None) -> None:
    """The tokenizer must have a chat template that adds a generation prompt (the assistant header)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "The tokenizer (processing_class) has no chat template. Set `tokenizer.chat_template` (e.g. from the "
            "model family's instruct tokenizer) before training."
        )
    messages = [{"role": "user", "content": "2+2?"}]
    kwargs = chat_template_kwargs or {}
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **kwargs)
    if with_prompt == without:
        raise ValueError(
            "The tokenizer's chat template ignores add_generation_prompt=True, so rollouts would not start an "
            "assistant turn. Use a template that appends the assistant header (e.g. '<|im_start|>assistant\\n') "
            "when add_generation_prompt is set."
        )


def validate_prompts(dataset, tokenizer, args, prompt_options=None, environment_prompt: bool = False) -> None:
    """Build every row's prompt once (map-style datasets): raises ``DatasetRowError`` naming the bad row.
    ``prompt_options(row)``: extra rendering arguments of the row's environment (its function tools);
    ``environment_prompt``: a TRL-style environment's ``reset`` may supply the prompt (see ``row_to_messages``)."""
    from .data import encode_prompt, row_to_messages

    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return  # iterable datasets are checked row by row as they stream
    if isinstance(dataset, dict):  # a dict of datasets for several eval sets
        for part in dataset.values():
            validate_prompts(part, tokenizer, args, prompt_options, environment_prompt)
        return
    for index in range(len(dataset)):
        row = dataset[index]
        encode_prompt(tokenizer, row_to_messages(row, index, environment_prompt=environment_prompt),
                      max_prompt_length=args.max_prompt_length,
                      truncation=args.prompt_truncation, index=index, chat_template_kwargs=args.chat_template_kwargs,
                      **(prompt_options(row) if prompt_options is not None else {}))


def validate_reward_columns(dataset, reward_funcs) -> None:
    """For the built-in answer rewards among ``reward_funcs`` (math, multiple choice), check that the dataset has
    the column each reads and that every reference in it is a string or a number (``None``: the row gets no
    reward). Raises ``ValueError`` for a missing or all-empty column, ``DatasetRowError`` naming the first bad row.
    Other reward functions are not checked: their columns are theirs to read (as in TRL)."""
    from .data import DatasetRowError
    from .rewards import MathReward, MultipleChoiceReward
    from .rewards.answers import reference_text

    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return
    if isinstance(dataset, dict):
        for part in dataset.values():
            validate_reward_columns(part, reward_funcs)
        return
    functions = [f for f in reward_funcs or () if isinstance(f, (MathReward, MultipleChoiceReward))]
    if not functions or len(dataset) == 0:
        return
    if hasattr(dataset, "column_names"):
        columns = set(dataset.column_names)
    else:
        columns = {key for index in range(len(dataset)) for key in dataset[index]}
    for function in functions:
        name, column = function.__name__, function.answer_column
        if column not in columns:
            raise ValueError(
                f"{name} reads the {column!r} column, but the dataset has none (it has {sorted(columns)}). Rename "
                f"the column holding the reference answers to {column!r}, or point the reward at it (e.g. "
                "make_math_reward(answer_column='solution'))."
            )
        if hasattr(dataset, "column_names"):
            values = dataset[column]
        else:
            values = [dataset[index].get(column) for index in range(len(dataset))]
        present = 0
        for index, value in enumerate(values):
            try:
                present += reference_text(value, column=column, reward=name) is not None
            except ValueError as error:
                raise DatasetRowError(f"Dataset row {index}: {error}") from None
        if not present:
            raise ValueError(f"Every row's {column!r} is empty (None or blank), so {name} can reward nothing. Fill "
                             "in the reference answers, or drop the reward.")


def dataset_columns(dataset) -> list[str] | None:
    """The columns every row reaches the reward functions with; ``None`` when they cannot be known up front."""
    if dataset is None:
        return None
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        return None
    if names is not None:
        return list(names)
    if isinstance(dataset, (list, tuple)) and dataset and all(isinstance(row, dict) for row in dataset):
        return sorted(set.intersection(*(set(row) for row in dataset)))
    return None


def validate_reward_signatures(dataset, reward_funcs) -> None:
    """Each callable reward must take TRL's keyword arguments (``**kwargs``) and find every argument it requires
    among them or the dataset's columns; raises naming the function, the argument and the fix."""
    from torch import nn

    from .reward_calling import check_reward_signature

    columns = dataset_columns(dataset)
    for function in reward_funcs or ():
        if isinstance(function, (str, nn.Module)) or not callable(function):
            continue
        from trl.trainer.utils import get_callable_name

        check_reward_signature(function, get_callable_name(function), columns)
