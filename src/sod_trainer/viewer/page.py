"""Trajectory records to one self-contained HTML page (inline CSS, JS and data; nothing is fetched).

The header (the batch's mean d_k and w_k by step, pattern counts, the shading legend) is static HTML written
here; the trajectories are drawn by the inline script from the embedded JSON: sorted and filtered by pattern,
reward and min weight, a page of cards at a time, and each opened trajectory's tokens in chunks, rendered
as they scroll into view, so a page with tens of thousands of tokens stays responsive.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..metrics import PATTERNS

__all__ = ["BUCKET_EDGES", "render_page", "write_page", "write_index", "batch_summary", "shading_bucket"]

#: |s_t − q_t| edges (nats) of the shading buckets: b0 < 0.05 ≤ b1 < 0.2 ≤ b2 < 0.5 ≤ b3 < 1 ≤ b4 < 2 ≤ b5
BUCKET_EDGES = (0.05, 0.2, 0.5, 1.0, 2.0)
PAGE_SIZE = 25  # trajectory cards per page
CHUNK_TOKENS = 1500  # tokens drawn at a time inside an opened trajectory
MAX_SUMMARY_STEPS = 24  # columns of the header's per-step table


def shading_bucket(student_logp: float | None, teacher_logp: float | None) -> str:
    """The CSS class the page gives a token (``b0``..``b5``, ``bn`` without log-probs); mirrors the script."""
    if student_logp is None or teacher_logp is None:
        return "bn"
    gap = abs(student_logp - teacher_logp)
    for index, edge in enumerate(BUCKET_EDGES):
        if gap < edge:
            return f"b{index}"
    return f"b{len(BUCKET_EDGES)}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def batch_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean d_k and w_k by step (over trajectories that have step k), pattern counts, mean reward."""
    by_step: dict[int, tuple[list[float], list[float]]] = {}
    for record in records:
        for step in record["steps"]:
            d_values, w_values = by_step.setdefault(int(step["k"]), ([], []))
            if step.get("d") is not None:
                d_values.append(step["d"])
            if step.get("w") is not None:
                w_values.append(step["w"])
    steps = [{"k": k, "d": _mean(d), "w": _mean(w), "n": max(len(d), len(w))} for k, (d, w) in sorted(by_step.items())]
    patterns = {name: sum(record.get("pattern") == name for record in records) for name in PATTERNS}
    rewards = [record["reward"] for record in records if record.get("reward") is not None]
    return {"steps": steps, "patterns": patterns, "reward": _mean(rewards), "trajectories": len(records),
            "tokens": sum(len(record["tokens"]["ids"]) for record in records)}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _steps_table(summary: dict[str, Any]) -> str:
    steps = summary["steps"][:MAX_SUMMARY_STEPS]
    if not steps:
        return '<p class="meta">No model steps in this batch.</p>'
    d_max = max((s["d"] for s in steps if s["d"] is not None), default=0.0) or 1.0
    head = "".join(f"<th>k={s['k'] + 1}</th>" for s in steps)

    def row(name: str, key: str, scale: float, digits: int) -> str:
        cells = "".join(
            f'<td data-k="{s["k"]}">{_fmt(s[key], digits)}'
            f'<span class="bar" style="width:{0 if s[key] is None else min(100, 100 * s[key] / scale):.0f}%"></span></td>'
            for s in steps)
        return f'<tr class="{key}"><td>{name}</td>{cells}</tr>'

    counts = "".join(f'<td data-k="{s["k"]}">{s["n"]}</td>' for s in steps)
    more = (f'<p class="meta">{len(summary["steps"]) - MAX_SUMMARY_STEPS} more steps not shown.</p>'
            if len(summary["steps"]) > MAX_SUMMARY_STEPS else "")
    return (f'<table class="steps" id="steps-table"><tr><th>step</th>{head}</tr>'
            f'{row("mean d_k", "d", d_max, 3)}{row("mean w_k", "w", 1.2, 2)}'
            f'<tr class="n"><td>trajectories</td>{counts}</tr></table>{more}')


def _legend() -> str:
    edges = ("0",) + tuple(f"{edge:g}" for edge in BUCKET_EDGES)
    labels = [f"{lo}–{hi}" for lo, hi in zip(edges, edges[1:])] + [f"≥ {edges[-1]}"]
    spans = "".join(f'<span class="t b{i}">{label}</span>' for i, label in enumerate(labels))
    return f'<div class="legend">|s<sub>t</sub> − q<sub>t</sub>| (nats): {spans}</div>'


def _controls(summary: dict[str, Any]) -> str:
    boxes = "".join(f'<label><input type="checkbox" class="pattern-filter" value="{name}" checked> {name} '
                    f'({summary["patterns"][name]})</label>' for name in PATTERNS)
    sorts = [("index", "batch order"), ("reward-desc", "reward, high first"), ("reward-asc", "reward, low first"),
             ("minw-asc", "min w, low first"), ("maxd-desc", "max d_k, high first"),
             ("length-desc", "length, long first")]
    options = "".join(f'<option value="{value}">{label}</option>' for value, label in sorts)
    return (
        '<div id="controls">'
        f'<label>sort <select id="sort">{options}</select></label>'
        f'<fieldset><legend>pattern</legend>{boxes}</fieldset>'
        '<fieldset>reward from <input id="reward-min" type="number" step="any"> to '
        '<input id="reward-max" type="number" step="any"></fieldset>'
        '<fieldset>min w from <input id="minw-min" type="number" step="any"> to '
        '<input id="minw-max" type="number" step="any"></fieldset>'
        '<span id="pager"><button type="button" id="prev">‹</button> <span id="page"></span> '
        '<button type="button" id="next">›</button></span>'
        '<span id="count"></span></div>'
    )


def _asset(name: str) -> str:
    return resources.files("sod_trainer.viewer").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(payload: Any) -> str:
    """JSON safe inside ``<script>``: no ``</script>`` or ``<!--`` can close or confuse the element."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_page(records: Sequence[dict[str, Any]], *, title: str | None = None, subtitle: str = "",
                pattern_threshold: float | None = None) -> str:
    """The page for ``records`` (from :mod:`sod_trainer.viewer.records`) as one HTML string."""
    records = list(records)
    summary = batch_summary(records)
    first = records[0] if records else {}
    if pattern_threshold is None:
        pattern_threshold = float(first.get("pattern_threshold", 0.8))
    if title is None:
        title = "SOD trajectories" + (f" — {first.get('mode', 'train')} step {first['step']}" if "step" in first else "")
    scheme = first.get("scheme")
    meta = (f'{summary["trajectories"]} trajectories · {summary["tokens"]} completion tokens · mean reward '
            f'{_fmt(summary["reward"], 3)}' + (f" · step weighting <b>{html.escape(str(scheme))}</b>" if scheme else "")
            + f" · pattern threshold {pattern_threshold:g}")
    patterns = "".join(f'<span class="badge {name}">{name} {count}</span>'
                       for name, count in summary["patterns"].items())
    payload = {"records": records, "buckets": list(BUCKET_EDGES), "pattern_threshold": pattern_threshold,
               "page_size": PAGE_SIZE, "chunk_tokens": CHUNK_TOKENS}
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{html.escape(title)}</title><style>{_asset("viewer.css")}</style></head><body>'
        f'<header class="page"><h1>{html.escape(title)}</h1>'
        f'<div class="meta">{meta}{" · " + html.escape(subtitle) if subtitle else ""}</div>'
        f'<div class="summary"><div>{_steps_table(summary)}</div><div><div class="patterns">{patterns}</div>'
        f'{_legend()}<div class="meta">Model tokens are shaded by |s<sub>t</sub> − q<sub>t</sub>| (student vs teacher '
        'log-prob of the sampled token); hover a token for s<sub>t</sub>, q<sub>t</sub> and its step. Each step '
        'starts with its d<sub>k</sub> and w<sub>k</sub>; tool observations are boxed.</div></div></div></header>'
        f'{_controls(summary)}<main id="list"></main><div id="tip" hidden></div>'
        f'<script id="sod-data" type="application/json">{_script_json(payload)}</script>'
        f'<script>{_asset("viewer.js")}</script></body></html>\n'
    )


def write_page(records: Sequence[dict[str, Any]], path: str | os.PathLike, **kwargs: Any) -> Path:
    """Render ``records`` to ``path`` (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(render_page(records, **kwargs), encoding="utf-8")
    os.replace(partial, path)
    return path


def write_index(folder: str | os.PathLike) -> Path:
    """``<folder>/index.html``: a list of links to the folder's trajectory pages."""
    folder = Path(folder)
    links = "".join(f'<li><a href="{html.escape(page.name)}">{html.escape(page.stem)}</a></li>'
                    for page in sorted(folder.glob("*.html")) if page.name != "index.html")
    index = folder / "index.html"
    index.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>SOD trajectories</title></head>'
                     '<body style="font-family:system-ui,sans-serif"><h1>SOD trajectory pages</h1>'
                     f"<ul>{links}</ul></body></html>\n", encoding="utf-8")
    return index
