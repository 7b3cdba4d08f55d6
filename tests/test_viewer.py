"""The trajectory viewer without a browser: records, the page's static parts, `sod inspect`, trackers, the trainer hook.

The page's behaviour in a real browser (token spans, shading, step marks, filters, console) is in
tests/test_viewer_browser.py.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types

import pytest
import torch

from sod_trainer.viewer import (BUCKET_EDGES, read_jsonl, render_page, send_to_trackers, shading_bucket,
                                token_texts, trajectories_from_masks, write_batch)
from viewer_batch import GAP_CYCLE, ORDER, STUDENT_LOGP, scripted_trajectories, scripted_view


@pytest.fixture
def records(tokenizer):
    return scripted_view(tokenizer).records(tokenizer, step=7, mode="train")


def test_token_texts_join_to_the_decoded_text_even_when_characters_span_tokens(tokenizer):
    text = "print(7*6)  # é → ✓ 日本\n\\boxed{42}"
    ids = tokenizer.encode(text)
    pieces = token_texts(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert "\ufffd" not in "".join(pieces)


def test_records_hold_the_scored_values(tokenizer, records):
    trajectories, gaps, rewards = scripted_trajectories(tokenizer)
    assert [r["pattern"] for r in records] == ["recovery", "erroneous", "stable"]
    assert [r["reward"] for r in records] == rewards
    assert [r["first_error_step"] for r in records] == [0, 0, -1]
    recovery, erroneous, stable = records
    assert [s["d"] for s in recovery["steps"]] == pytest.approx([0.1, 1.2, 0.1], abs=1e-4)
    assert [s["w"] for s in recovery["steps"]] == pytest.approx([1.0, 0.1 / 1.2, 1.0], abs=1e-4)
    assert [s["d"] for s in erroneous["steps"]] == pytest.approx([0.25, 0.75], abs=1e-4)
    assert [s["w"] for s in erroneous["steps"]] == pytest.approx([1.0, 1 / 3], abs=1e-4)
    assert recovery["min_weight"] == pytest.approx(0.1 / 1.2, abs=1e-4)
    n = stable["steps"][0]["n"]
    assert stable["steps"][0]["d"] == pytest.approx(sum(GAP_CYCLE[i % 6] for i in range(n)) / n, abs=1e-4)
    for record, trajectory, row_gaps in zip(records, trajectories, gaps):
        tokens = record["tokens"]
        assert tokens["ids"] == trajectory.completion_ids and tokens["mask"] == trajectory.assistant_mask
        assert "".join(tokens["text"]) == tokenizer.decode(trajectory.completion_ids)
        for t, sampled in enumerate(tokens["mask"]):
            if sampled:
                assert tokens["s"][t] == STUDENT_LOGP and tokens["q"][t] == pytest.approx(STUDENT_LOGP - row_gaps[t])
                assert tokens["step"][t] >= 0
            else:
                assert tokens["s"][t] is None and tokens["q"][t] is None and tokens["step"][t] == -1
        for step in record["steps"]:  # spans and d_k agree with the per-token values
            inside = [t for t, k in enumerate(tokens["step"]) if k == step["k"]]
            assert (step["start"], step["end"], step["n"]) == (inside[0], inside[-1] + 1, len(inside))
            mean = sum(abs(tokens["s"][t] - tokens["q"][t]) for t in inside) / len(inside)
            assert step["d"] == pytest.approx(mean, abs=1e-3)
        assert [(t["start"], t["end"], t["tool_error"]) for t in record["turns"]] == [
            (t.start, t.end, t.tool_error) for t in trajectory.turns]
    json.dumps(records, allow_nan=False)  # JSON-able, no NaN


def test_steps_are_what_the_segmenter_says(tokenizer):
    from sod_trainer.segmenters import FixedLengthSegmenter

    trajectories, gaps, rewards = scripted_trajectories(tokenizer)
    view = scripted_view(tokenizer, trajectories=trajectories, gaps=gaps, rewards=rewards)
    ids = torch.zeros_like(view.step_ids)
    mask = torch.zeros_like(view.step_ids)
    for row, t in enumerate(trajectories):
        ids[row, :t.completion_length] = torch.tensor(t.completion_ids)
        mask[row, :t.completion_length] = torch.tensor(t.assistant_mask)
    view.step_ids = FixedLengthSegmenter(4)(ids, mask)
    record = view.records(tokenizer)[0]
    assert record["tokens"]["step"] == view.step_ids[0, :trajectories[0].completion_length].tolist()
    assert all(step["n"] <= 4 for step in record["steps"])


def test_page_is_self_contained_with_the_batch_header(records):
    page = render_page(records)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must fetch nothing"
    assert "<script src" not in page and "<link" not in page
    table = re.search(r'<table class="steps".*?</table>', page).group(0)
    d_row = re.findall(r'<td data-k="\d+">([\d.]+)<', re.search(r'<tr class="d">.*?</tr>', table).group(0))
    w_row = re.findall(r'<td data-k="\d+">([\d.]+)<', re.search(r'<tr class="w">.*?</tr>', table).group(0))
    stable_d = records[2]["steps"][0]["d"]
    assert [float(v) for v in d_row] == pytest.approx([(0.1 + 0.25 + stable_d) / 3, 0.975, 0.1], abs=1e-3)
    assert [float(v) for v in w_row] == pytest.approx([1.0, (0.1 / 1.2 + 1 / 3) / 2, 1.0], abs=6e-3)
    for name, count in (("stable", 1), ("erroneous", 1), ("recovery", 1)):
        assert f'value="{name}" checked> {name} ({count})' in page
    # the embedded data cannot close its <script> element, whatever the text holds
    nasty = json.loads(json.dumps(records))
    nasty[0]["prompt"] = "</script><script>alert(1)</script><!--"
    assert "</script><script>alert(1)" not in render_page(nasty)


def test_shading_buckets_follow_the_edges():
    assert [shading_bucket(0.0, -g) for g in GAP_CYCLE] == [f"b{i}" for i in range(6)]
    assert shading_bucket(None, -1.0) == "bn"
    assert shading_bucket(-1.0, -1.0 - BUCKET_EDGES[0]) == "b1"  # an edge belongs to the bucket above


def test_sod_inspect_renders_a_run_dir_and_a_jsonl_and_prints_paths(tmp_path, records, capsys):
    from sod_trainer.cli import main

    folder = tmp_path / "run" / "trajectories"
    write_batch(records, folder, "train_step_000001")
    write_batch(records[:1], folder, "train_step_000002")
    (folder / "train_step_000001.html").unlink()
    assert main(["inspect", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str((folder / name).resolve()) for name in
                       ("train_step_000001.html", "train_step_000002.html", "index.html")]
    assert 'data-k="2"' in (folder / "train_step_000001.html").read_text()
    assert main(["inspect", str(folder / "train_step_000002.jsonl"), "--output", str(tmp_path / "one.html")]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "one.html").resolve())
    assert read_jsonl(folder / "train_step_000002.jsonl") == records[:1]


def test_sod_inspect_errors_name_the_path(tmp_path, capsys):
    from sod_trainer.cli import main

    assert main(["inspect", str(tmp_path)]) == 2
    assert "log_completions" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    assert main(["inspect", str(bad)]) == 2
    assert "bad.jsonl:1 is not a trajectory record" in capsys.readouterr().err


class _FakeTracker(types.ModuleType):
    """Stands in for wandb / trackio: records what was logged."""

    def __init__(self, name, with_html=True):
        super().__init__(name)
        self.logged = []
        self.run = object()
        if with_html:
            self.Html = lambda html: ("html", html)
        self.Table = lambda dataframe: ("table", dataframe)
        self.log = lambda payload, **kwargs: self.logged.append((payload, kwargs))


def test_trackers_get_the_page_and_a_table(monkeypatch, records):
    wandb, trackio = _FakeTracker("wandb"), _FakeTracker("trackio", with_html=False)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "trackio", trackio)
    assert send_to_trackers(["tensorboard"], "<html>", records, 3) == []
    assert send_to_trackers(["wandb", "trackio"], "<html>page</html>", records, 3) == ["wandb", "trackio"]
    payload, _ = wandb.logged[0]
    assert payload["sod/trajectories"] == ("html", "<html>page</html>") and payload["train/global_step"] == 3
    kind, frame = payload["sod/trajectories_table"]
    assert kind == "table" and frame["pattern"].tolist() == list(ORDER)
    assert frame["w_k"].tolist()[0] == "1.000, 0.083, 1.000" and frame["first_error_step"].tolist()[:2] == [1, 1]
    payload, kwargs = trackio.logged[0]
    assert set(payload) == {"sod/trajectories_table"} and kwargs == {"step": 3}  # no trackio.Html: the table only
    wandb.run = None  # no active wandb run: skipped
    assert send_to_trackers(["wandb"], "<html>", records, 4) == []


def test_trajectories_from_masks_make_turns_from_mask_runs():
    [trajectory] = trajectories_from_masks([[1, 2]], [[5, 6, 7, 8, 9, 10]], [[1, 1, 0, 0, 1, 1]], [[True, False]],
                                           tool_called=[[True, False]])
    assert [(t.start, t.end, t.tool_called, t.tool_error) for t in trajectory.turns] == [
        (0, 2, True, True), (4, 6, False, False)]
    assert trajectory.first_error_turn == 0


# ------------------------------------------------------------------ the trainer writes the page when it logs
def _assert_d_is_the_mean_gap(record):
    """Each step's d_k is the mean |s_t - q_t| of the per-token values the page shows."""
    tokens = record["tokens"]
    for step in record["steps"]:
        inside = [t for t, k in enumerate(tokens["step"]) if k == step["k"]]
        mean = sum(abs(tokens["s"][t] - tokens["q"][t]) for t in inside) / len(inside)
        assert step["d"] == pytest.approx(mean, abs=2e-3)


def _train_and_read(tokenizer, tmp_path, **overrides):
    from test_trainer import make_trainer

    trainer = make_trainer(tokenizer, tmp_path, max_steps=1, log_completions=True, **overrides)
    trainer.train()
    folder = tmp_path / "trajectories"
    assert sorted(p.name for p in folder.iterdir()) == ["train_step_000001.html", "train_step_000001.jsonl"]
    return trainer, read_jsonl(folder / "train_step_000001.jsonl")


@pytest.mark.parametrize("two_pass", [False, True], ids=["on_policy", "two_pass"])
def test_trainer_writes_the_page_of_each_logged_batch(tokenizer, tmp_path, two_pass):
    overrides = {"num_iterations": 2} if two_pass else {}
    trainer, records = _train_and_read(tokenizer, tmp_path, **overrides)
    assert trainer._on_policy is not two_pass
    assert len(records) == 4 and {r["step"] for r in records} == {1} and {r["mode"] for r in records} == {"train"}
    logged = trainer.state.log_history[0]
    assert sum(r["steps"][0]["d"] for r in records) / 4 == pytest.approx(logged["divergence/step_1"], rel=1e-3)
    for record in records:
        tokens = record["tokens"]
        model = [t for t, m in enumerate(tokens["mask"]) if m]
        assert model and all(math.isfinite(tokens["s"][t]) and math.isfinite(tokens["q"][t]) for t in model)
        assert any(abs(tokens["s"][t] - tokens["q"][t]) > 1e-3 for t in model)  # a real teacher, not q = s
        _assert_d_is_the_mean_gap(record)
        d1 = record["steps"][0]["d"]
        for step in record["steps"]:  # SOD weights from the logged divergences
            assert step["w"] == pytest.approx(min((d1 + 1e-6) / (step["d"] + 1e-6), 1.2), abs=2e-3)
    beta = [r for r in records if "beta" in r["prompt"]]
    assert beta and all(r["first_error_step"] == 0 and r["turns"][0]["tool_error"] for r in beta)


def test_on_policy_and_two_pass_pages_agree(tokenizer, tmp_path):
    _, on_policy = _train_and_read(tokenizer, tmp_path / "a")
    _, two_pass = _train_and_read(tokenizer, tmp_path / "b", num_iterations=2)
    for a, b in zip(on_policy, two_pass):
        assert a["tokens"]["ids"] == b["tokens"]["ids"]
        assert a["tokens"]["s"] == pytest.approx(b["tokens"]["s"], abs=2e-4)
        assert a["tokens"]["q"] == pytest.approx(b["tokens"]["q"], abs=2e-4)
        assert [s["w"] for s in a["steps"]] == pytest.approx([s["w"] for s in b["steps"]], abs=2e-4)


@pytest.mark.parametrize("two_pass", [False, True], ids=["on_policy", "two_pass"])
def test_a_teacher_with_another_tokenizer_shows_the_q_the_weights_used(tokenizer, tmp_path, two_pass):
    from conftest import make_tiny_model
    from sod_trainer.toy.tokenizer import build_tokenizer
    from test_cross_tokenizer import make_trainer as make_cross_trainer

    # a student tokenizer with fewer merges than the teacher's: teacher spans cover several student tokens
    student_tokenizer, teacher_tokenizer = build_tokenizer(vocab_size=300), build_tokenizer(family="header")
    trainer = make_cross_trainer(student_tokenizer, tmp_path,
                                 teacher=make_tiny_model(teacher_tokenizer, hidden=96, seed=1),
                                 teacher_tokenizer=teacher_tokenizer, log_completions=True,
                                 **({"num_iterations": 2} if two_pass else {}))
    trainer.train()
    assert trainer.state.log_history[0]["teacher/student_tokens_per_span"] > 1.1
    records = read_jsonl(tmp_path / "trajectories" / "train_step_000001.jsonl")
    assert len(records) == 4
    for record in records:  # q_t spread over the student's tokens of each teacher span, as the weights saw it
        _assert_d_is_the_mean_gap(record)


def test_the_python_examples_of_the_docs_run(tmp_path, monkeypatch, records):
    from pathlib import Path

    blocks = re.findall(r"```python\n(.*?)```", (Path(__file__).resolve().parents[1] / "docs" / "viewer.md").read_text(),
                        re.DOTALL)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    write_batch(records, tmp_path / "runs" / "my-run" / "trajectories", "train_step_000010")
    for block in blocks:
        exec(compile(block, "docs/viewer.md", "exec"), {})
    assert "Recoveries at step 10" in (tmp_path / "recovered.html").read_text()
    toy = read_jsonl(tmp_path / "pages" / "toy_student.jsonl")
    assert len(toy) == 4 and all(record["tokens"]["ids"] for record in toy)
