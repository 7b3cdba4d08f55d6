"""`sod demo --quick` end to end: the report's structure and that training really happened."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    from sod_trainer.cli import main

    output = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--output-dir", str(output)]) == 0
    report = json.loads((output / "report.json").read_text())
    return report, output


def test_quick_demo_report_structure(quick_report):
    report, output = quick_report
    assert set(report) >= {"settings", "teacher", "student", "training", "diagnostics", "timing_seconds", "plots"}
    assert report["settings"]["quick"] is True
    assert 0.0 <= report["teacher"]["accuracy"] <= 1.0
    student = report["student"]
    for summary in [student["before"], *student["after"].values()]:
        assert 0.0 <= summary["accuracy"] <= 1.0
        for key in ("tool_calls_per_trajectory", "tool_failures_per_trajectory", "share_with_tool_error"):
            assert math.isfinite(summary[key])
    for diagnostics in [report["diagnostics"]["before"], *report["diagnostics"]["after"].values()]:
        assert set(diagnostics["by_context"]) == {"first", "after_clean", "after_error"}
        assert diagnostics["by_step_index"]["0"]["w"] == pytest.approx(1.0)
        assert sum(diagnostics["pattern_shares"].values()) == pytest.approx(1.0)
    for name in report["plots"]:
        assert (output / name).stat().st_size > 0


def test_quick_demo_trained_the_student_with_the_tool(quick_report):
    report, _ = quick_report
    run = report["training"]["sod"]
    assert run["losses_finite"] and len(run["curve"]) == run["steps"]
    assert run["parameters_changed"] > 0.5
    assert report["student"]["before"]["tool_calls_per_trajectory"] > 0
    assert all(entry["tools/call_frequency"] > 0 for entry in run["curve"])
    assert all("divergence/step_1" in entry and "weights/step_1" in entry for entry in run["curve"])
    assert report["student"]["cold_start"]["log"]


def test_quick_demo_writes_the_before_and_after_trajectory_pages(quick_report):
    from sod_trainer.viewer import read_jsonl

    report, output = quick_report
    pages = report["trajectory_pages"]
    assert set(pages["after"]) == set(report["training"])
    for page in [pages["before"], *pages["after"].values()]:
        html = (output / page).read_text()
        assert '<script id="sod-data"' in html and "http" not in html.split("<script", 1)[0]
        records = read_jsonl((output / page).with_suffix(".jsonl"))
        assert len(records) == report["student"]["before"]["n"]
        assert all(record["steps"] and record["steps"][0]["w"] == 1.0 for record in records if record["steps"])
    index = (output / pages["index"]).read_text()
    assert 'href="before.html"' in index and 'href="after_sod.html"' in index


def test_demo_cli_help():
    from sod_trainer.toy.demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
