"""Evaluation is one package without an import cycle; the old module names still import; one system prompt."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sod_trainer" / "evaluation"


def _internal_imports(path: Path) -> set[str]:
    """Sibling modules that ``path`` imports at module level (``from .x import``, ``from . import x``)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module] if node.module else [alias.name for alias in node.names])
    return names


def test_evaluation_package_has_no_import_cycle():
    modules = {p.stem: _internal_imports(p) for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert {"metrics", "report", "results", "runner", "benchmarks", "cli"} <= set(modules)
    visiting, done = set(), set()

    def visit(name, chain):
        assert name not in visiting, f"import cycle: {' -> '.join(chain + [name])}"
        if name in done:
            return
        visiting.add(name)
        for other in modules.get(name, ()):
            visit(other, chain + [name])
        visiting.discard(name)
        done.add(name)

    for name in modules:
        visit(name, [])


def test_old_module_names_are_the_new_modules():
    import sod_trainer.evaluation as evaluation

    pairs = {"sod_trainer.benchmarks_data": "benchmarks", "sod_trainer.evaluation_metrics": "metrics",
             "sod_trainer.evaluation_report": "report"}
    for old, new in pairs.items():
        assert importlib.import_module(old) is getattr(evaluation, new)
    from sod_trainer.benchmarks_data import load_benchmark
    from sod_trainer.evaluation_report import format_report

    assert load_benchmark is evaluation.load_benchmark and format_report is evaluation.format_report


def test_training_and_evaluation_use_one_system_prompt():
    from sod_trainer.data import TOOL_SYSTEM_PROMPT, prepare_dataset
    from sod_trainer.evaluation import DEFAULT_TOOL_SYSTEM_PROMPT, EvaluationConfig
    from sod_trainer.prompts import TOOL_SYSTEM_PROMPT as ONE

    assert TOOL_SYSTEM_PROMPT is ONE and DEFAULT_TOOL_SYSTEM_PROMPT is ONE and EvaluationConfig().system_prompt is ONE
    import datasets

    trained = prepare_dataset(datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}]))
    assert trained[0]["prompt"][0] == {"role": "system", "content": ONE}
