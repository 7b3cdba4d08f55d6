"""Seeded ablations of the objective on the offline toy world: ``sod ablate`` and :func:`run_ablation`.

``grid`` runs (and resumes) the grid of arms x seeds x worlds, ``stats`` holds the statistics (mean and std over
seeds, the paired difference to SOD with a seeds-then-problems bootstrap interval), ``report`` writes
``ablation.json``, ``ablation.md`` and the plots.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .grid import ARMS, WORLDS, AblationSettings, run_grid
from .report import write_report

__all__ = ["ARMS", "WORLDS", "AblationSettings", "run_ablation", "main"]


def run_ablation(output_dir: str = "sod-ablation", quick: bool = False, *, settings: AblationSettings | None = None,
                 progress: bool = True, **overrides) -> dict[str, Any]:
    """Run or finish the grid in ``output_dir`` and write its report; returns ``{"summary", "table", "plots"}``."""
    settings = settings or (AblationSettings.quick(**overrides) if quick else AblationSettings(**overrides))
    start = time.monotonic()

    def log(message: str) -> None:
        if progress:
            print(f"[{time.monotonic() - start:7.1f}s] {message}", flush=True)

    grid = run_grid(output_dir, settings, log=log)
    report = write_report(grid, output_dir)
    if progress:
        print(report["table"])
        log(f"wrote {Path(output_dir) / 'ablation.json'}, ablation.md and {', '.join(report['plots'])}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``sod ablate [--quick] [--output_dir DIR] [--arms ...] [--seeds ...] [--worlds ...]``"""
    parser = argparse.ArgumentParser(prog="sod ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = AblationSettings()
    parser.add_argument("--output_dir", "--output-dir", default="sod-ablation",
                        help="where runs, ablation.json, ablation.md and plots go; a killed grid resumes there")
    parser.add_argument("--quick", action="store_true", help="a tiny budget (minutes): for tests and a first look")
    parser.add_argument("--arms", nargs="+", default=None, help=f"arms to run (default: all of {list(ARMS)})")
    parser.add_argument("--worlds", nargs="+", default=None, help=f"worlds (default: all of {list(WORLDS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 1 2)")
    for name in ("train_steps", "eval_problems", "eval_samples", "threads", "max_completion_length", "max_turns",
                 "cold_start_steps", "cold_start_trajectories"):
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {getattr(defaults, name)} (--quick: {getattr(AblationSettings.quick(), name)})")
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("output_dir", "quick") and v is not None}
    try:
        run_ablation(args.output_dir, quick=args.quick, **overrides)
    except ValueError as error:
        print(f"sod ablate: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
