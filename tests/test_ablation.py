"""`sod ablate`: the grid runs every arm from one cold start per seed, resumes where it stopped, and reports."""

from __future__ import annotations

import json

import pytest

from sod_trainer.ablation import ARMS, AblationSettings, main, run_ablation
from sod_trainer.ablation.grid import run_path


def _tiny(**overrides) -> AblationSettings:
    return AblationSettings.quick(worlds=["stateless"], seeds=[3, 4], eval_problems=3, cold_start_trajectories=16,
                                  cold_start_steps=2, diagnostics_rollouts=2, max_turns=3, **overrides)


def test_grid_runs_arms_per_seed_resumes_and_refuses_other_settings(tmp_path, capsys):
    settings = _tiny(arms=["sod", "uniform", "iw_opd"])
    report = run_ablation(str(tmp_path), settings=settings, progress=False)
    for arm in settings.arms:
        for seed in settings.seeds:
            run = json.loads(run_path(tmp_path, "stateless", arm, seed).read_text())
            assert run["arm"] == arm and run["seed"] == seed and len(run["eval"]["per_problem"]) == 3
            assert run["curve"] and run["curve"][0]["step"] == 1
    # one cold start per (world, seed), shared by the arms
    assert sorted(p.name for p in (tmp_path / "cold_start" / "stateless").iterdir()) == [
        "seed3.json", "seed3.pt", "seed4.json", "seed4.pt"]
    summary = report["summary"]["stateless"]["arms"]
    assert set(summary) == {"sod", "uniform", "iw_opd"} and "difference_to_sod" in summary["uniform"]
    assert (tmp_path / "ablation.md").read_text().count("| `") == 3
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert {(r["arm"], r["seed"]) for r in saved["runs"]} == {(a, s) for a in settings.arms for s in settings.seeds}
    assert all((tmp_path / name).exists() for name in saved["plots"])
    # the trajectory viewer's pages of each cold start and each run's scored rollouts (sod_trainer.viewer)
    from sod_trainer.viewer import read_jsonl

    pages = tmp_path / "trajectories" / "stateless"
    assert {p.name for p in pages.glob("*.html")} == {"index.html"} | {f"seed{s}_before.html" for s in settings.seeds} \
        | {f"seed{s}_{a}_after.html" for a in settings.arms for s in settings.seeds}
    records = read_jsonl(pages / "seed3_iw_opd_after.jsonl")
    assert len(records) == settings.diagnostics_rollouts and {r["scheme"] for r in records} == {"iw_opd"}

    # a killed grid: one run missing; resuming runs only that one
    victim = run_path(tmp_path, "stateless", "uniform", 4)
    victim.unlink()
    others = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.json")}
    run_ablation(str(tmp_path), settings=settings, progress=False)
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in others.items())

    # resuming under other settings would mix runs in one table: refused, naming the difference
    with pytest.raises(ValueError, match="train_steps: 1 -> 2"):
        run_ablation(str(tmp_path), settings=_tiny(arms=["sod"], train_steps=2), progress=False)


def test_unknown_arm_and_missing_sod_are_refused(tmp_path, capsys):
    assert main(["--quick", "--output_dir", str(tmp_path), "--arms", "sod", "sideways"]) == 2
    assert "Unknown arm(s) ['sideways']" in capsys.readouterr().err
    assert main(["--quick", "--output_dir", str(tmp_path), "--arms", "uniform"]) == 2
    assert "keep 'sod'" in capsys.readouterr().err


def test_arms_cover_the_issue_list():
    assert {"sod", "uniform", "decay", "mask_after_error", "sod_uncapped", "iw_opd", "grpo", "sod_no_grpo",
            "uniform_no_grpo", "sod_median_ref"} <= set(ARMS)
    assert ARMS["grpo"] == {"opd_coef": 0.0} and ARMS["sod_no_grpo"]["grpo_coef"] == 0.0


@pytest.mark.slow
def test_quick_grid_every_arm_both_worlds(tmp_path):
    report = run_ablation(str(tmp_path), quick=True, progress=False)
    for world in ("stateless", "flaky"):
        assert set(report["summary"][world]["arms"]) == set(ARMS)
    import torch

    # seeds differ: the two seeds' cold starts are different students
    first, second = (torch.load(tmp_path / "cold_start" / "flaky" / f"seed{s}.pt") for s in (0, 1))
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_sod_ablate_is_a_cli_command(capsys):
    from sod_trainer import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["ablate", "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "--output_dir" in out and "--arms" in out and "--quick" in out


def test_two_processes_on_one_grid_do_not_run_a_run_twice(tmp_path, monkeypatch):
    """A second process started on other seeds of the same grid (to use another core) may finish runs the first
    one listed at its start; the first skips them instead of training them again."""
    from sod_trainer.ablation import grid

    ran = []

    def fake_run_one(context, output_dir, world, arm, seed):
        ran.append((arm, seed))
        payload = {"world": world, "arm": arm, "seed": seed}
        grid._write_json(run_path(output_dir, world, arm, seed), payload)
        if (arm, seed) == ("sod", 0):  # meanwhile another process finishes (uniform, 0)
            grid._write_json(run_path(output_dir, world, "uniform", 0), {**payload, "arm": "uniform", "by": "other"})
        return payload

    monkeypatch.setattr(grid, "_run_one", fake_run_one)
    monkeypatch.setattr(grid, "_Context", lambda settings, log: object())
    logs = []
    result = grid.run_grid(tmp_path, AblationSettings(worlds=["flaky"], arms=["sod", "uniform"], seeds=[0]),
                           log=logs.append)
    assert ran == [("sod", 0)]
    assert any("finished meanwhile by another process, skipped" in line for line in logs)
    assert {r["arm"]: r.get("by") for r in result["runs"]} == {"sod": None, "uniform": "other"}


def test_a_run_whose_training_stopped_early_is_not_recorded(tmp_path, monkeypatch):
    """SIGTERM makes SODTrainer stop cleanly (checkpoint, normal return); the grid must not then evaluate and
    record that student as if it had trained the full budget."""
    from sod_trainer.trainer import SODTrainer

    monkeypatch.setattr(SODTrainer, "train", lambda self, *args, **kwargs: None)  # stopped before its first step
    with pytest.raises(RuntimeError, match="stopped after 0 of 1 steps"):
        run_ablation(str(tmp_path), settings=_tiny(arms=["sod"]), progress=False)
    assert not run_path(tmp_path, "stateless", "sod", 3).exists()


def test_a_runs_seconds_leave_out_the_shared_cold_start(tmp_path, monkeypatch):
    """The first arm of a seed trains the cold start every arm shares; its run time must not include it (sittings
    1-3 recorded it in the first arm's ``seconds``)."""
    from sod_trainer.ablation import grid

    clock = [1000.0]
    monkeypatch.setattr(grid.time, "monotonic", lambda: clock[0])

    def cold_start(*args):
        clock[0] += 3600.0  # an hour of SFT
        return object(), {}

    def train(*args):
        clock[0] += 60.0
        return []

    monkeypatch.setattr(grid, "_cold_start", cold_start)
    monkeypatch.setattr(grid, "_train", train)
    monkeypatch.setattr(grid, "_evaluate", lambda *args, **kwargs: {"accuracy": 0.5})
    context = type("Context", (), {"settings": AblationSettings(), "log": staticmethod(lambda line: None)})()
    payload = grid._run_one(context, tmp_path, "flaky", "sod", 0)
    assert payload["seconds"] == 60.0
    assert json.loads(run_path(tmp_path, "flaky", "sod", 0).read_text())["seconds"] == 60.0
