"""The text that wraps a tool observation between two assistant turns, from the chat template."""

from __future__ import annotations

__all__ = ["ToolMessagesGlue", "ToolResponseFormatter"]

_ASSISTANT = "SOD_ASSISTANT_SENTINEL"
_OBSERVATION = "SOD_OBSERVATION_SENTINEL"


class ToolResponseFormatter:
    """Turns an observation into the ids appended after an assistant turn (``assistant_mask = 0``).

    The glue is derived once from the chat template: render ``[user, assistant, tool]`` with a
    generation prompt and keep what follows the assistant's content, e.g. for ChatML
    ``<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n{observation}\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n``.
    When the model already sampled the end-of-turn token, that token is not repeated.
    """

    def __init__(self, tokenizer, template: str | None = None, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.template = template or self.derive_template(tokenizer, chat_template_kwargs or {})
        if "{observation}" not in self.template:
            raise ValueError(f"tool_response_template must contain '{{observation}}', got {self.template!r}.")
        eos = tokenizer.eos_token or ""
        self.end_of_turn = eos if eos and self.template.startswith(eos) else ""

    @staticmethod
    def derive_template(tokenizer, chat_template_kwargs: dict) -> str:
        messages = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _ASSISTANT}]
        try:
            text = tokenizer.apply_chat_template(
                messages + [{"role": "tool", "content": _OBSERVATION}],
                tokenize=False, add_generation_prompt=True, **chat_template_kwargs,
            )
        except Exception as error:  # templates without a tool role raise in many ways
            raise ValueError(
                "Could not render a 'tool' message with the tokenizer's chat template "
                f"({type(error).__name__}: {error}). Set SODConfig.tool_response_template, e.g. "
                "'<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n{observation}\\n</tool_response><|im_end|>\\n"
                "<|im_start|>assistant\\n'."
            ) from error
        if _ASSISTANT not in text or _OBSERVATION not in text:
            raise ValueError(
                "The chat template dropped the assistant or tool message; set SODConfig.tool_response_template."
            )
        glue = text[text.rindex(_ASSISTANT) + len(_ASSISTANT):]
        return glue.replace("{", "{{").replace("}", "}}").replace(_OBSERVATION, "{observation}")

    def __call__(self, observation: str, turn_ended_with_eos: bool) -> list[int]:
        text = self.template.format(observation=observation)
        if turn_ended_with_eos and self.end_of_turn:
            text = text[len(self.end_of_turn):]
        return self.tokenizer.encode(text, add_special_tokens=False)


class ToolMessagesGlue:
    """The ids appended after an assistant turn that made function calls: one or several ``tool`` messages
    rendered by the chat template, up to the next assistant header (``assistant_mask = 0``).

    As TRL's ``GRPOTrainer`` renders them: ``[user, assistant(tool_calls)]`` and the same plus the tool messages
    (with the generation prompt) are tokenized with the chat template, and the ids after the first rendering's last
    end-of-turn token are the glue, e.g. for Qwen3
    ``\\n<|im_start|>user\\n<tool_response>\\n12\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n``.
    Only this suffix is appended: the sampled turn before it is never re-tokenized. When the model's turn did not end
    with the end-of-turn token, it is put in front of the glue.
    """

    def __init__(self, tokenizer, chat_template: str | None = None, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False,
            chat_template=self.chat_template, **self.chat_template_kwargs)
        return list(ids)

    def __call__(self, tool_messages: list[dict], turn_ended_with_eos: bool) -> list[int]:
        if not tool_messages:
            raise ValueError("ToolMessagesGlue needs at least one tool message.")
        calls = [{"type": "function", "function": {"name": tool_messages[0].get("name", "tool"), "arguments": {}}}]
        dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": calls}]
        prefix = self._render(dummy, add_generation_prompt=False)
        full = self._render(dummy + list(tool_messages), add_generation_prompt=True)
        eos = self.tokenizer.eos_token_id
        ends = [i for i, token in enumerate(prefix) if token == eos]
        if ends:
            prefix = prefix[: ends[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise ValueError(
                "The chat template renders an assistant turn differently once tool messages follow it, so the tool "
                "glue cannot be cut from it. Use a prefix-preserving template (trl.chat_template_utils."
                "get_training_chat_template gives one for the common families).")
        glue = full[len(prefix):]
        if not turn_ended_with_eos and ends:
            glue = [eos] + glue
        return glue
