"""The model card SODTrainer writes next to the weights, as TRL's trainers do (``README.md`` in ``output_dir``).

Same front matter as TRL's cards (``base_model``, ``datasets``, ``library_name``, ``model_name``, tags with
``generated_from_trainer``, ``trl`` and ``sod``), the SOD paper's citation, and the recipe: the SOD settings
of the run, and the recipe file itself when the run came from one (copied next to the card, so the link
works on the Hub).
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["SOD_CITATION", "SOD_PAPER_ID", "SOD_PAPER_TITLE", "RECIPE_FILE_NAME", "generate_model_card"]

SOD_PAPER_ID = "2605.07725"
SOD_PAPER_TITLE = "SOD: Step-wise On-policy Distillation for Small Language Model Agents"
SOD_CITATION = """@article{sod2026,
  title   = {{SOD: Step-wise On-policy Distillation for Small Language Model Agents}},
  journal = {arXiv preprint arXiv:2605.07725},
  year    = {2026},
  url     = {https://arxiv.org/abs/2605.07725}
}"""
TRL_CITATION = """@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}"""
RECIPE_FILE_NAME = "sod_recipe.yaml"
# The settings that define a SOD run (SOD_SPEC §5-§8), shown in the card's recipe table.
RECIPE_FIELDS = ("step_weighting", "sod_epsilon", "sod_delta", "opd_coef", "grpo_coef", "num_generations",
                 "max_completion_length", "max_tool_calling_iterations", "tool_call_format", "temperature",
                 "learning_rate", "epsilon", "epsilon_high", "dual_clip", "loss_type", "scale_rewards")

_TEMPLATE = """---
{{ card_data }}
---

# Model Card for {{ model_name }}

This model is a fine-tuned version of {% if base_model %}[{{ base_model }}](https://huggingface.co/{{ base_model }}){% else %}a local model{% endif %}{% if dataset_name %} on the [{{ dataset_name }}](https://huggingface.co/datasets/{{ dataset_name }}) dataset{% endif %}{% if teacher_model %}, distilled from the teacher [{{ teacher_model }}](https://huggingface.co/{{ teacher_model }}){% endif %}.
It has been trained with [sod-trainer](https://pypi.org/project/sod-trainer/), built on [TRL](https://github.com/huggingface/trl).

## Quick start

```python
from transformers import pipeline

question = "What is the sum of the first 100 positive integers?"
generator = pipeline("text-generation", model="{{ hub_model_id }}", device_map="auto")
output = generator([{"role": "user", "content": question}], max_new_tokens=512, return_full_text=False)[0]
print(output["generated_text"])
```

## Training procedure

{% if wandb_url %}[<img src="https://raw.githubusercontent.com/wandb/assets/main/wandb-github-badge-28.svg" alt="Visualize in Weights & Biases" width="150" height="24"/>]({{ wandb_url }}){% endif %}

This model was trained with SOD, a method introduced in [{{ paper_title }}](https://huggingface.co/papers/{{ paper_id }}): on-policy distillation on the student's own multi-turn tool-use trajectories, each step's distillation signal weighted by how far that step's student-teacher divergence has drifted from the first step's.

### Recipe

{% if recipe_file %}The run's recipe: [{{ recipe_file }}]({{ recipe_file }}) (`sod train --config {{ recipe_file }}`). {% endif %}The SOD settings of the run:

| Setting | Value |
|---|---|
{% for name, value in recipe %}| `{{ name }}` | `{{ value }}` |
{% endfor %}
### Framework versions

- sod-trainer: {{ sod_version }}
- TRL: {{ trl_version }}
- Transformers: {{ transformers_version }}
- Pytorch: {{ pytorch_version }}
- Datasets: {{ datasets_version }}
- Tokenizers: {{ tokenizers_version }}

## Citations

Cite SOD as:

```bibtex
{{ sod_citation }}
```

Cite TRL as:

```bibtex
{{ trl_citation }}
```
"""


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _hub_id(name_or_path: str | None) -> str | None:
    """A model or dataset name as the Hub knows it: None for a local folder or file, or nothing."""
    if not name_or_path or os.path.exists(name_or_path):
        return None
    return name_or_path


def generate_model_card(
    *,
    base_model: str | None,
    model_name: str | None,
    hub_model_id: str | None,
    dataset_name: str | None,
    tags: list[str],
    args: Any,
    teacher_model: str | None = None,
    recipe_file: str | None = None,
    wandb_url: str | None = None,
) -> ModelCard:
    """A :class:`huggingface_hub.ModelCard` for a SOD run (TRL's front matter, SOD's citation and recipe)."""
    card_data = ModelCardData(
        base_model=base_model,
        datasets=_hub_id(dataset_name),
        library_name="transformers",
        model_name=model_name,
        tags=["generated_from_trainer", *tags],
    )
    recipe = [(name, getattr(args, name)) for name in RECIPE_FIELDS if hasattr(args, name)]
    return ModelCard.from_template(
        card_data,
        template_str=_TEMPLATE,
        base_model=base_model,
        model_name=model_name,
        hub_model_id=hub_model_id or model_name,
        dataset_name=_hub_id(dataset_name),
        teacher_model=_hub_id(teacher_model),
        wandb_url=wandb_url,
        paper_title=SOD_PAPER_TITLE,
        paper_id=SOD_PAPER_ID,
        recipe=recipe,
        recipe_file=recipe_file,
        sod_citation=SOD_CITATION,
        trl_citation=TRL_CITATION,
        sod_version=_version("sod-trainer"),
        trl_version=_version("trl"),
        transformers_version=_version("transformers"),
        pytorch_version=_version("torch"),
        datasets_version=_version("datasets"),
        tokenizers_version=_version("tokenizers"),
    )


def write_model_card(trainer: Any, model_name: str | None = None, dataset_name: str | None = None,
                     tags: str | list[str] | None = None) -> None:
    """``trainer.create_model_card``: write ``README.md`` (and the recipe file) into ``trainer.args.output_dir``."""
    if not trainer.is_world_process_zero():
        return
    config = trainer.accelerator.unwrap_model(trainer.model).config
    base_model = _hub_id(getattr(config, "_name_or_path", None))
    tags = set() if tags is None else {tags} if isinstance(tags, str) else set(tags)
    if hasattr(config, "unsloth_version"):
        tags.add("unsloth")
    if "JOB_ID" in os.environ:
        tags.add("hf_jobs")
    tags.update(trainer._tag_names)
    teacher = getattr(trainer, "teacher_model", None)
    teacher_name = getattr(getattr(trainer.accelerator.unwrap_model(teacher), "config", None), "_name_or_path",
                           None) if teacher is not None else trainer.args.teacher_model_name_or_path
    os.makedirs(trainer.args.output_dir, exist_ok=True)
    recipe_file = None
    source = getattr(trainer, "recipe_file", None)
    if source and os.path.isfile(source):
        recipe_file = RECIPE_FILE_NAME
        target = os.path.join(trainer.args.output_dir, recipe_file)
        if os.path.abspath(source) != os.path.abspath(target):
            shutil.copyfile(source, target)
    wandb = sys.modules.get("wandb")  # only when the run reports to it (imported by transformers' callback)
    wandb_url = wandb.run.url if wandb is not None and getattr(wandb, "run", None) is not None else None
    card = generate_model_card(
        base_model=base_model, model_name=model_name, hub_model_id=trainer.hub_model_id, dataset_name=dataset_name,
        tags=sorted(tags), args=trainer.args, teacher_model=teacher_name, recipe_file=recipe_file,
        wandb_url=wandb_url,
    )
    card.save(os.path.join(trainer.args.output_dir, "README.md"))
