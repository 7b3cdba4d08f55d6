"""Model card and Hub: TRL's create_model_card signature, written at save, push_to_hub up to the upload call."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_model
from scripted import SCRIPTS, ScriptedBackend, dataset, reward
from sod_trainer import SODConfig, SODTrainer

ROOT = Path(__file__).resolve().parents[1]


class FakeHub:
    """Stands in for transformers' ``hf_api()``: records create_repo / upload_folder, uploads nothing."""

    def __init__(self):
        self.uploads: list[dict] = []
        self.repos: list[str] = []

    def __call__(self):
        return self

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return types.SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"someone/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {path.name: path.read_text() for path in Path(folder_path).iterdir()
                 if path.suffix in (".md", ".yaml", ".json")}
        self.uploads.append({"repo_id": repo_id, "files": files, **kwargs})
        return "https://huggingface.co/" + repo_id


@pytest.fixture
def fake_hub(monkeypatch):
    import transformers.trainer

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", hub)
    return hub


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def _trainer(tokenizer, tmp_path, **overrides):
    student, teacher = make_tiny_model(tokenizer, seed=0), make_tiny_model(tokenizer, hidden=96, seed=1)
    config = dict(output_dir=str(tmp_path / "my-sod-model"), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=160, max_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                  max_tool_calling_iterations=4)
    config.update(overrides)
    trainer = SODTrainer(model=student, teacher_model=teacher, args=SODConfig(**config), train_dataset=dataset(),
                         processing_class=tokenizer, reward_funcs=[reward])
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, SCRIPTS)
    return trainer


def test_create_model_card_has_trls_signature_tags_citation_and_recipe(tokenizer, tmp_path):
    import inspect

    from trl import GRPOTrainer

    trl_parameters = list(inspect.signature(GRPOTrainer.create_model_card).parameters)
    assert list(inspect.signature(SODTrainer.create_model_card).parameters) == trl_parameters
    trainer = _trainer(tokenizer, tmp_path)
    trainer.model.config._name_or_path = "Qwen/Qwen3-1.7B"  # as if loaded from the Hub
    trainer.create_model_card(model_name="my-sod-model", dataset_name="someone/math-problems", tags="extra")
    card = (tmp_path / "my-sod-model" / "README.md").read_text()
    meta = _front_matter(card)
    assert {"trl", "sod", "generated_from_trainer", "extra"} <= set(meta["tags"])
    assert meta["base_model"] == "Qwen/Qwen3-1.7B" and meta["datasets"] == "someone/math-problems"
    assert meta["library_name"] == "transformers" and meta["model_name"] == "my-sod-model"
    assert "arXiv:2605.07725" in card and "SOD: Step-wise On-policy Distillation for Small Language Model Agents" in card
    assert "https://huggingface.co/papers/2605.07725" in card
    assert "| `step_weighting` | `sod` |" in card and "| `sod_delta` | `0.2` |" in card  # the run's recipe


def test_model_card_is_written_with_each_checkpoint_as_trl_does(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path, save_strategy="steps", save_steps=1)
    trainer.train()
    output = tmp_path / "my-sod-model"
    assert (output / "checkpoint-1").is_dir()
    meta = _front_matter((output / "README.md").read_text())
    assert meta["model_name"] == "my-sod-model" and "sod" in meta["tags"]


def test_push_to_hub_with_dataset_name_uploads_the_model_and_its_card(tokenizer, tmp_path, fake_hub):
    """Before: ``push_to_hub(dataset_name=...)`` raised TypeError (transformers' create_model_card has no such
    argument), after training, in `sod train` and examples/math_tir.py."""
    trainer = _trainer(tokenizer, tmp_path, push_to_hub=True, hub_model_id="someone/my-sod-model")
    trainer.train()
    trainer.push_to_hub(dataset_name="someone/math-problems")
    upload = fake_hub.uploads[-1]
    assert upload["repo_id"] == "someone/my-sod-model"
    assert "config.json" in upload["files"]
    meta = _front_matter(upload["files"]["README.md"])
    assert meta["datasets"] == "someone/math-problems" and {"trl", "sod"} <= set(meta["tags"])
    assert 'model="someone/my-sod-model"' in upload["files"]["README.md"]


def _run_example(argv):
    import runpy
    import sys

    saved = sys.argv
    sys.argv = [str(ROOT / "examples" / "math_tir.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = saved


@pytest.mark.parametrize("entry", ["sod train", "examples/math_tir.py"])
def test_training_scripts_push_to_the_hub_with_the_card_and_recipe(entry, tmp_path, fake_hub, monkeypatch):
    """Both scripts ended in TypeError at `push_to_hub(dataset_name=...)` before; now they upload, on the toy world."""
    from sod_trainer.scripts.train import run

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    config = yaml.safe_load((ROOT / "examples" / "recipes" / "toy.yaml").read_text())
    config.update(launcher="none", output_dir=str(tmp_path / "toy-sod"), max_steps=1, per_device_train_batch_size=4,
                  max_completion_length=32, max_tool_calling_iterations=2, max_train_samples=8, push_to_hub=True,
                  hub_model_id="someone/toy-sod")
    recipe.write_text(yaml.safe_dump(config))
    if entry == "sod train":
        run(["--config", str(recipe)])
    else:
        _run_example(["--config", str(recipe)])
    upload = fake_hub.uploads[-1]
    assert upload["repo_id"] == "someone/toy-sod" and upload["commit_message"] == "End of training"
    card = upload["files"]["README.md"]
    assert {"trl", "sod"} <= set(_front_matter(card)["tags"])
    assert "[sod_recipe.yaml](sod_recipe.yaml)" in card  # the link works on the Hub: the recipe goes along
    assert yaml.safe_load(upload["files"]["sod_recipe.yaml"])["hub_model_id"] == "someone/toy-sod"


def test_saved_model_carries_its_rollout_format_and_sod_eval_uses_it(tokenizer, tmp_path, capsys):
    """`sod eval --model <a SOD output folder>` evaluates the model in the format it was trained in."""
    from sod_trainer.evaluation.arguments import parse_eval_args
    from sod_trainer.evaluation.cli import config_from_args

    trainer = _trainer(tokenizer, tmp_path, tool_call_format="code_tag", max_tool_response_chars=77,
                       max_tool_calling_iterations=3, chat_template_kwargs={"enable_thinking": False})
    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    script, rollout, used = parse_eval_args(["--model", str(folder), "--benchmark", "toy"])
    assert used == str(folder / "sod_rollout.yaml")
    config = config_from_args((script, rollout))
    assert (config.tool_call_format, config.max_tool_response_chars, config.max_turns,
            config.chat_template_kwargs) == ("code_tag", 77, 4, {"enable_thinking": False})  # 3 tool rounds + 1
    script, rollout, _ = parse_eval_args(["--model", str(folder), "--benchmark", "toy", "--tool_call_format", "json"])
    assert config_from_args((script, rollout)).tool_call_format == "json"  # a flag overrides the saved format
    _, rollout, used = parse_eval_args(["--model", "Qwen/Qwen3-0.6B", "--benchmark", "toy"])
    assert used is None and rollout.tool_call_format == "fenced"  # not a SOD folder: the built-in defaults
