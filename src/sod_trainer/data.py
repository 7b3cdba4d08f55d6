"""Dataset rows to prompt token ids: conversational ``prompt``, ``messages``, or plain ``problem``/``question``."""

from __future__ import annotations

from typing import Any

__all__ = ["DatasetRowError", "row_to_messages", "encode_prompt"]

PROMPT_COLUMNS = ("prompt", "messages", "problem", "question")


class DatasetRowError(ValueError):
    """A dataset row that cannot be turned into a prompt; the message names the row and the column."""


def row_to_messages(row: dict[str, Any], index: int | None = None, extra_text: str | None = None) -> list[dict]:
    """The chat messages of a row's prompt (``extra_text`` from ``ToolEnvironment.reset`` is appended)."""
    where = f"row {index}" if index is not None else "a row"
    if "prompt" in row and row["prompt"] is not None:
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        column = "prompt"
    elif "messages" in row and row["messages"] is not None:
        messages = list(row["messages"])
        while messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages.pop()  # the reference answer is not part of the prompt
        column = "messages"
    else:
        column = next((c for c in ("problem", "question") if isinstance(row.get(c), str)), None)
        if column is None:
            raise DatasetRowError(
                f"Dataset {where} has none of the prompt columns {PROMPT_COLUMNS} (it has {sorted(row)}). "
                "Add a 'prompt' column (a string or a list of chat messages) or a 'problem' column."
            )
        messages = [{"role": "user", "content": row[column]}]
    if not messages:
        raise DatasetRowError(f"Dataset {where}: column {column!r} is empty.")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or not isinstance(message.get("content"), str):
            raise DatasetRowError(
                f"Dataset {where}: column {column!r} must hold chat messages like "
                f"{{'role': 'user', 'content': '...'}}, got {message!r:.120}."
            )
    if not any(m["content"].strip() for m in messages):
        raise DatasetRowError(f"Dataset {where}: the prompt in column {column!r} is empty.")
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
) -> list[int]:
    """Token ids of the chat-templated prompt with the generation prompt; length checked or left-truncated."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "The tokenizer has no chat template. Set `processing_class.chat_template` (e.g. copy one from the "
            "model family's instruct tokenizer) before training."
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))
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
