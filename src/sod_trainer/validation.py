"""Checks run when a trainer is built, so that bad set-ups fail early with a message that names the fix."""

from __future__ import annotations

__all__ = ["check_chat_template", "validate_prompts"]


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


def validate_prompts(dataset, tokenizer, args) -> None:
    """Build every row's prompt once (map-style datasets): raises ``DatasetRowError`` naming the bad row."""
    from .data import encode_prompt, row_to_messages

    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return  # iterable datasets are checked row by row as they stream
    if isinstance(dataset, dict):  # a dict of datasets for several eval sets
        for part in dataset.values():
            validate_prompts(part, tokenizer, args)
        return
    for index in range(len(dataset)):
        row = dataset[index]
        encode_prompt(tokenizer, row_to_messages(row, index), max_prompt_length=args.max_prompt_length,
                      truncation=args.prompt_truncation, index=index, chat_template_kwargs=args.chat_template_kwargs)
