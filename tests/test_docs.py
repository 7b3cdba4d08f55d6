"""The docs: the site builds in strict mode, the API pages list the public names, the examples run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _code_block(page: str, contains: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.DOTALL)
    matching = [block for block in blocks if contains in block]
    assert matching, f"no python block with {contains!r} in docs/{page}"
    return matching[0]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs / mkdocstrings not installed (pip install 'sod-trainer[docs]')")
def test_docs_build_strict_and_api_pages_list_the_public_names(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = {"SODTrainer": "api/trainer", "SODConfig": "api/config", "ToolEnvironment": "api/environments",
             "StepSegmenter": "api/segmenters", "token_weights": "api/objective"}
    for name, page in pages.items():
        html = (site / page / "index.html").read_text()
        assert re.search(rf'id="sod_trainer[\w.]*\.{name}"', html), f"{name} is not documented on {page}"
    config_page = (site / "api" / "config" / "index.html").read_text()
    assert "step_weighting" in config_page and "Step weighting scheme." in config_page  # generated field table
    assert "Keep a Changelog" in (site / "changelog" / "index.html").read_text()  # CHANGELOG.md included
    assert (site / "images" / "weight_patterns.png").is_file()
    # offline: equations are MathML written at build time, and no page loads a script, style or font from the web
    concepts = (site / "concepts" / "index.html").read_text()
    assert concepts.count("<math ") > 20 and 'class="arithmatex"' not in concepts and "\\(" not in concepts
    for page in site.rglob("*.html"):
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', page.read_text())
        assert remote == [], (page, remote)


def test_every_docs_page_is_reachable_from_the_nav():
    sys.path.insert(0, str(DOCS / "scripts"))
    try:
        import yaml

        from hooks import on_config, unlisted_pages
    finally:
        sys.path.pop(0)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = on_config({"docs_dir": str(DOCS), "nav": config["nav"]})
    assert unlisted_pages(DOCS, listed["nav"]) == []


def test_every_recipe_is_documented():
    text = (DOCS / "recipes.md").read_text()
    for recipe in (ROOT / "examples" / "recipes").glob("*.yaml"):
        assert f"`{recipe.name}`" in text, recipe.name


def test_weight_pattern_figure_shows_what_the_code_computes():
    spec = importlib.util.spec_from_file_location("weight_patterns", DOCS / "scripts" / "weight_patterns.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.compute()
    for name, (_, weights, _, label) in data.items():
        assert label == name  # each example is labelled as its pattern by the trainer's own classifier
    assert [round(w, 2) for w in data["recovery"][1]] == [1.00, 0.73, 0.56, 0.41, 0.76, 1.12, 1.20]  # SOD_SPEC §4
    assert round(data["erroneous"][1][2], 2) == 0.17  # d = [0.218, ..., 1.284]
    assert max(data["stable"][1]) == pytest.approx(1.2)
    assert (DOCS / "images" / "weight_patterns.png").stat().st_size > 10_000


def test_environment_example_from_the_guide_works():
    namespace: dict = {}
    exec(compile(_code_block("environments.md", "class LookupEnvironment"), "environments.md", "exec"), namespace)
    environment = namespace["LookupEnvironment"]()
    intro = environment.reset(table=json.dumps({"width": 7, "height": 3}), answer="21", problem="Area?")
    assert "height, width" in intro
    found = environment.step("Look it up.\n<lookup>width</lookup>")
    assert (found.observation, found.done, found.error, found.tool_called) == ("7", False, False, True)
    missing = environment.step("<lookup>depth</lookup>")
    assert missing.error and "depth" in missing.observation
    final = environment.step("The area is \\boxed{21}.")
    assert final.done and final.observation is None
    assert environment.stop_strings == ("</lookup>",)


def test_segmenter_example_from_the_guide_works(tokenizer):
    namespace: dict = {}
    exec(compile(_code_block("environments.md", "class SentenceSegmenter"), "environments.md", "exec"), namespace)
    segmenter = namespace["SentenceSegmenter"](tokenizer)
    first = tokenizer.encode("Add the two. Then print it.", add_special_tokens=False)
    tool = tokenizer.encode("7", add_special_tokens=False)
    second = tokenizer.encode("So it is 7.", add_special_tokens=False)
    ids = torch.tensor([first + tool + second])
    mask = torch.tensor([[1] * len(first) + [0] * len(tool) + [1] * len(second)])
    steps = segmenter(ids, mask)[0].tolist()
    assert all(step == -1 for step in steps[len(first):len(first) + len(tool)])  # observation tokens
    model_steps = [s for s in steps if s >= 0]
    assert model_steps == sorted(model_steps) and model_steps[0] == 0
    assert max(model_steps) >= 2  # two sentences in the first turn, one in the second
    from sod_trainer.segmenters import StepSegmenter

    assert isinstance(segmenter, StepSegmenter)
