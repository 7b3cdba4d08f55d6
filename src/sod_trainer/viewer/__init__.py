"""See what SOD sees: a token-level trajectory viewer (``log_completions`` pages, ``sod inspect``).

- :mod:`.records`: a scored batch as JSON-able records (per-token ids, text, s_t, q_t, step ids; d_k, w_k,
  reward, weight pattern, first erroneous step), one JSON object per trajectory in a ``.jsonl`` file;
- :mod:`.page`: records to one self-contained HTML page (inline CSS/JS, no network; lazy rendering);
- :mod:`.trackers`: what the trainer calls when it logs (files under ``output_dir/trajectories/``, wandb, trackio);
- :mod:`.offline`: scoring rollouts outside the trainer (the demo's before/after pages);
- :mod:`.inspect`: ``sod inspect PATH``;
- :mod:`.headless`: loading a page in headless Chromium (tests, benchmark, screenshots).
"""

from .offline import score_trajectories, trajectories_from_masks, write_rollout_page, write_toy_rollouts_page
from .page import BUCKET_EDGES, batch_summary, render_page, shading_bucket, write_page
from .records import FORMAT, BatchView, read_jsonl, token_texts, trajectory_record, write_jsonl
from .trackers import TRAJECTORY_DIR, log_batch, send_to_trackers, trajectory_table, write_batch

__all__ = [
    "BUCKET_EDGES", "FORMAT", "TRAJECTORY_DIR", "BatchView", "batch_summary", "log_batch", "read_jsonl",
    "render_page", "score_trajectories", "send_to_trackers", "shading_bucket", "token_texts", "trajectories_from_masks",
    "trajectory_record", "trajectory_table", "write_batch", "write_jsonl", "write_page", "write_rollout_page",
    "write_toy_rollouts_page",
]
