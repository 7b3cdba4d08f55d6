"""Writing and printing an evaluation report (``problems.jsonl``, ``summary.json``, the plain-text table)."""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EvaluationReport", "write_report", "format_report"]

_FRACTION_PREFIXES = ("average@", "pass@", "maj@", "tool_failure_rate", "truncated_rate", "answered_rate",
                      "error_trajectory_rate")


@dataclass
class EvaluationReport:
    """Per-seed metrics, their mean and std over seeds, and the per-problem records."""

    benchmark: str
    model: str
    num_problems: int
    num_samples: int
    seeds: list[int]
    per_seed: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    config: dict[str, Any]
    problems: list[dict[str, Any]] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON summary (everything but the per-problem records)."""
        data = asdict(self)
        data.pop("problems")
        return data

    def table(self) -> str:
        """The plain-text table of :func:`format_report`."""
        return format_report(self)


def write_report(report: EvaluationReport, output_dir: str | Path) -> tuple[Path, Path]:
    """``problems.jsonl`` (one line per problem and seed) and ``summary.json`` under ``output_dir``."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    problems_path = directory / "problems.jsonl"
    with problems_path.open("w", encoding="utf-8") as handle:
        for record in report.problems:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary_path = directory / "summary.json"
    summary_path.write_text(json.dumps(report.summary(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return problems_path, summary_path


def _is_fraction(key: str) -> bool:
    return key.startswith(_FRACTION_PREFIXES)


def format_report(report: EvaluationReport) -> str:
    """A plain-text table: one row per metric, ``mean ± std`` over seeds (fractions in percent)."""
    seeds = len(report.seeds)
    header = (f"{report.benchmark} | {report.model} | {report.num_problems} problems x {report.num_samples} "
              f"samples | seeds {', '.join(map(str, report.seeds))}")
    column = "mean ± std" if seeds > 1 else "value"
    lines = [header, f"{'metric':<28}{column}"]
    for key, value in report.mean.items():
        std = report.std[key]
        if _is_fraction(key):
            text = f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if seeds > 1 else "")
        else:
            text = f"{value:.2f}" + (f" ± {std:.2f}" if seeds > 1 else "")
        lines.append(f"{key + (' (%)' if _is_fraction(key) else ''):<28}{text}")
    return "\n".join(lines)
