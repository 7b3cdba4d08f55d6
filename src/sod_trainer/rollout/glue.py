"""The text that wraps a tool observation between two assistant turns, from the chat template."""

from __future__ import annotations

__all__ = ["ToolResponseFormatter"]

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
