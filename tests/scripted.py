"""A scripted generation backend: replays canned assistant turns as token ids (tests only)."""

from __future__ import annotations

from datasets import Dataset

from sod_trainer.rollout.types import GenerationOutput

# Two canned worlds shared by the trainer tests: "alpha" calls the tool once and answers right, "beta" makes a
# NameError, retries, and answers wrong (the reference is 41).
SCRIPTS = {
    "alpha": ["Let me compute.\n```python\n1234 * 56\n```", "So \\boxed{69104}."],
    "beta": ["```python\nprint(undefined)\n```", "```python\nprint(7 * 6)\n```", "\\boxed{42}"],
}


def reward(prompts, completions, answer, **kwargs):
    """A TRL-style reward: conversational completions are message lists; the answer is in the last assistant turn."""
    texts = [c if isinstance(c, str) else [m for m in c if m["role"] == "assistant"][-1]["content"]
             for c in completions]
    return [1.0 if f"\\boxed{{{a}}}" in t else -1.0 for t, a in zip(texts, answer)]


def dataset():
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": "alpha: 1234*56?"}], "answer": "69104"},
        {"prompt": [{"role": "user", "content": "beta: 7*6?"}], "answer": "41"},
    ])


class ScriptedBackend:
    """Each context gets the next canned turn of its script, chosen by the prompt it starts with."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]], add_eos: bool = True):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.add_eos = add_eos
        self.calls: list[int] = []
        self.eos_token_ids = {tokenizer.eos_token_id}

    def _script_for(self, context: list[int]) -> tuple[list[str], int]:
        text = self.tokenizer.decode(context)
        for key, script in self.scripts.items():
            if key in text:
                return script, text.count("<|im_start|>assistant") - 1
        raise KeyError(f"no script for context {text!r}")

    def generate(self, contexts, max_new_tokens, stop_strings=()):
        self.calls.append(len(contexts))
        outputs = []
        for context, budget in zip(contexts, max_new_tokens):
            script, turn = self._script_for(context)
            ids = self.tokenizer.encode(script[min(turn, len(script) - 1)], add_special_tokens=False)
            if self.add_eos:
                ids = ids + [self.tokenizer.eos_token_id]
            reason = "eos" if self.add_eos else "stop"
            if len(ids) > budget:
                ids, reason = ids[:budget], "length"
            outputs.append(GenerationOutput(ids, reason))
        return outputs
