"""``log_completions``: a logged rollout batch's page and records on disk, and on wandb / trackio.

Called by :class:`~sod_trainer.SODTrainer` on the main process when it logs (one call, :func:`log_batch`):
``output_dir/trajectories/<mode>_step_<N>.html`` and the ``.jsonl`` of its records beside it (so that
``sod inspect`` can render it again), then, for the trackers in ``report_to`` that take them, the page as
``wandb.Html`` / ``trackio.Html`` and a per-trajectory table. Tracker imports are guarded: a tracker that is
not installed, or has no active run, is skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .page import render_page
from .records import BatchView, write_jsonl

logger = logging.getLogger(__name__)

__all__ = ["TRAJECTORY_DIR", "log_batch", "write_batch", "trajectory_table", "send_to_trackers"]

TRAJECTORY_DIR = "trajectories"
TRACKER_KEY = "sod/trajectories"


def write_batch(records: Sequence[dict[str, Any]], folder: str | os.PathLike, name: str,
                **page_kwargs: Any) -> tuple[Path, Path, str]:
    """Write ``<folder>/<name>.jsonl`` and ``<folder>/<name>.html``; returns both paths and the page's HTML."""
    folder = Path(folder)
    jsonl = write_jsonl(records, folder / f"{name}.jsonl")
    page_html = render_page(records, **page_kwargs)
    page = folder / f"{name}.html"
    partial = page.with_name(page.name + ".partial")
    partial.write_text(page_html, encoding="utf-8")
    os.replace(partial, page)
    return page, jsonl, page_html


def trajectory_table(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """One row per trajectory (columns as lists): step, index, reward, pattern, weights, the completion text."""
    def steps(record: dict[str, Any], key: str) -> str:
        return ", ".join("–" if step[key] is None else f"{step[key]:.3f}" for step in record["steps"])

    return {
        "step": [record.get("step") for record in records],
        "index": [record["index"] for record in records],
        "reward": [record["reward"] for record in records],
        "pattern": [record["pattern"] for record in records],
        "min_weight": [record["min_weight"] for record in records],
        "first_error_step": [record["first_error_step"] + 1 if record["first_error_step"] >= 0 else None
                             for record in records],
        "d_k": [steps(record, "d") for record in records],
        "w_k": [steps(record, "w") for record in records],
        "completion": ["".join(record["tokens"]["text"]) for record in records],
    }


def _dataframe(table: dict[str, list[Any]]):
    import pandas  # a dependency of datasets, hence always installed with sod-trainer

    return pandas.DataFrame(table)


def send_to_trackers(report_to: Sequence[str] | str | None, page_html: str, records: Sequence[dict[str, Any]],
                     step: int) -> list[str]:
    """Log the page and the table to wandb (active run) and trackio when in ``report_to``; returns those used."""
    if isinstance(report_to, str):
        report_to = [report_to]
    report_to = list(report_to or [])
    used = []
    if "wandb" in report_to or "all" in report_to:
        try:
            import wandb
        except ImportError:
            wandb = None
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.log({TRACKER_KEY: wandb.Html(page_html),
                       f"{TRACKER_KEY}_table": wandb.Table(dataframe=_dataframe(trajectory_table(records))),
                       "train/global_step": step})
            used.append("wandb")
    if "trackio" in report_to or "all" in report_to:
        try:
            import trackio
        except ImportError:
            trackio = None
        if trackio is not None:
            payload = {f"{TRACKER_KEY}_table": trackio.Table(dataframe=_dataframe(trajectory_table(records)))}
            html_type = getattr(trackio, "Html", None)  # trackio >= 0.x; older versions take tables only
            if html_type is not None:
                payload[TRACKER_KEY] = html_type(page_html)
            trackio.log(payload, step=step)
            used.append("trackio")
    return used


def log_batch(trainer, view: BatchView | None) -> Path | None:
    """Write the page of ``view`` (the last scored batch) for ``trainer`` and send it to its trackers.

    Returns the page's path, or None when there is nothing complete to show (an on-policy batch whose loss
    has not run over every micro-batch, e.g. right after resuming mid-batch).
    """
    if view is None:
        return None
    if not view.complete:
        logger.warning("log_completions: the last rollout batch has no student log-probs or step weights for "
                       "every row yet (resumed mid-batch?); no trajectory page for this logging step.")
        return None
    mode = "train" if trainer.model.training else "eval"
    step = int(trainer.state.global_step)
    records = view.records(trainer.processing_class, step=step, mode=mode)
    folder = Path(trainer.args.output_dir) / TRAJECTORY_DIR
    page, _, page_html = write_batch(records, folder, f"{mode}_step_{step:06d}",
                                     pattern_threshold=view.pattern_threshold)
    try:
        send_to_trackers(trainer.args.report_to, page_html, records, step)
    except Exception as error:  # a tracker hiccup must not stop training; the page is on disk
        logger.warning("log_completions: could not send the trajectory page to the trackers (%s: %s); it is at %s.",
                       type(error).__name__, error, page)
    return page
