r"""The prompts a model is trained and evaluated with, in one place **[ours]**.

The paper names its answer formats (SOD_SPEC §6) and its tool (§7) but does not print its prompts.
Training (:func:`sod_trainer.data.prepare_dataset`, ``sod train``) and evaluation
(:func:`sod_trainer.evaluation.evaluate`, ``sod eval``) both use these texts, so a student is evaluated
under the system prompt and the problem templates it was trained with.
"""

from __future__ import annotations

__all__ = [
    "TOOL_SYSTEM_PROMPT",
    "MATH_TEMPLATE",
    "MULTIPLE_CHOICE_TEMPLATE",
    "CODE_STDIN_TEMPLATE",
    "CODE_STARTER_TEMPLATE",
    "resolve_system_prompt",
]

TOOL_SYSTEM_PROMPT = (
    "You can run Python code to help you: write it in a ```python block and stop. The code runs in a fresh "
    "Python process and its printed output (or error) is shown to you before you continue. Use the tool as "
    "often as you need, then give your final answer."
)
"""The default system prompt of training and evaluation: the paper's tool (SOD_SPEC §7) described in words,
asking for exactly its tool-call format (a ```` ```python ```` block)."""

MATH_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
MULTIPLE_CHOICE_TEMPLATE = (
    "{problem}\n\n{choices}\n\nPlease reason step by step, and put the letter of the correct option "
    "({letters}) within \\boxed{{}}, e.g. \\boxed{{A}}."
)
CODE_STDIN_TEMPLATE = (
    "{problem}\n\nWrite a Python 3 program that reads the input from standard input and writes the answer "
    "to standard output. After your reasoning, give the complete program in one final ```python code block."
)
CODE_STARTER_TEMPLATE = (
    "{problem}\n\nComplete the following starter code. After your reasoning, give the complete solution "
    "in one final ```python code block.\n\n```python\n{starter_code}\n```"
)


def resolve_system_prompt(value: str | None) -> str | None:
    """The command-line spelling of a system prompt: ``tool`` (or ``None``) is :data:`TOOL_SYSTEM_PROMPT`,
    ``none`` or ``''`` is no system message, anything else is the text itself."""
    if value is None or value.strip().lower() == "tool":
        return TOOL_SYSTEM_PROMPT
    if not value.strip() or value.strip().lower() == "none":
        return None
    return value
