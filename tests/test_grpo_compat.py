"""A TRL user's GRPOConfig options: the docs table is checked against the installed TRL and SODConfig, options SOD
lacks are refused at construction, and TRL's defaults and rules hold where the table says "same"."""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import re
import warnings
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments
from trl import GRPOConfig

from conftest import make_tiny_model
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.grpo_compat import UNSUPPORTED_FIELDS, unsupported_reason

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "coming_from_trl.md"
ROW = re.compile(r"^\| `(\w+)` \| `(.*?)` \| (same|SOD default: `(.*?)`|not supported) \|(.*)\|$")


def _default(item: dataclasses.Field):
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def _table() -> dict[str, tuple[str, str, str | None, str]]:
    rows = {}
    for line in PAGE.read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, trl_default, status, sod_default, notes = match.groups()
            assert name not in rows, f"{name} has two rows"
            rows[name] = (trl_default, status.split(":")[0], sod_default, notes.strip())
    return rows


def _grpo_fields() -> list[str]:
    """GRPOConfig's own fields, the TrainingArguments fields it overrides, and the TrainingArguments fields whose
    default SODConfig changes: what a TRL user's config may carry that SOD must handle."""
    base, grpo, sod = (TrainingArguments.__dataclass_fields__, GRPOConfig.__dataclass_fields__,
                       SODConfig.__dataclass_fields__)
    names = [name for name in grpo if name not in base or _default(grpo[name]) != _default(base[name])]
    names += [name for name in base if name not in names and _default(sod[name]) != _default(grpo[name])]
    return names


def _configs(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (GRPOConfig(str(tmp_path / "grpo"), use_cpu=True, report_to=[]),
                SODConfig(str(tmp_path / "sod"), use_cpu=True, report_to=[]))


def _other_value(value, annotation: str):
    """A value other than ``value`` that the field's type allows."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    if "dict" in annotation:
        return {"key": 1}
    if "float" in annotation:
        return 0.5
    if "int" in annotation:
        return 4
    return "other"


def test_docs_table_lists_every_grpo_config_field_with_trls_default(tmp_path):
    table = _table()
    expected = _grpo_fields()
    missing = [name for name in expected if name not in table]
    extra = [name for name in table if name not in expected]
    assert not missing, f"docs/coming_from_trl.md has no row for these GRPOConfig fields: {missing}"
    assert not extra, f"docs/coming_from_trl.md has rows for fields the installed TRL's GRPOConfig lacks: {extra}"
    grpo = GRPOConfig.__dataclass_fields__
    wrong = {name: (row[0], repr(_default(grpo[name]))) for name, row in table.items()
             if row[0] != repr(_default(grpo[name]))}
    assert not wrong, f"TRL defaults misstated (table, installed TRL): {wrong}"


def test_docs_table_states_what_sod_does_with_each_field(tmp_path):
    grpo_config, sod_config = _configs(tmp_path)
    for name, (_, status, sod_default, notes) in _table().items():
        reason = unsupported_reason(SODConfig, name)
        if status == "not supported":
            assert reason is not None, f"{name}: the table says 'not supported' but SODConfig supports it"
            assert notes == reason.replace("|", "/"), f"{name}: the notes should give SODConfig's reason"
            continue
        assert reason is None, f"{name}: SODConfig refuses it but the table says {status!r}"
        assert name in SODConfig.__dataclass_fields__, f"{name}: not a SODConfig field"
        sod_value, trl_value = _plain(getattr(sod_config, name)), _plain(getattr(grpo_config, name))
        if status == "same":
            assert sod_value == trl_value, f"{name}: 'same' in the table, but SOD {sod_value!r} vs TRL {trl_value!r}"
        else:
            assert sod_value != trl_value, f"{name}: the table says the default differs, but both are {sod_value!r}"
            assert sod_default == repr(sod_value), f"{name}: the table says SOD's default is {sod_default}, " \
                                                   f"it is {sod_value!r}"
            assert notes, f"{name}: a differing default needs its reason in the notes"


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_FIELDS))
def test_unsupported_option_is_refused_at_construction_naming_it(name, tmp_path):
    """Before: SODConfig(beta=0.04) failed with "unexpected keyword argument" (no reason), a YAML key said
    "add them to the dataclass"; now each is refused with what SOD does instead."""
    item = UNSUPPORTED_FIELDS[name]
    value = _other_value(item.default, str(item.type))
    with pytest.raises(ValueError, match=rf"not supported by SODTrainer: {name}=") as error:
        SODConfig(str(tmp_path), use_cpu=True, **{name: value})
    assert "docs/coming_from_trl.md" in str(error.value)
    SODConfig(str(tmp_path), use_cpu=True, **{name: item.default})  # the default itself is fine


def test_trls_defaults_for_gradient_checkpointing_and_bf16(tmp_path):
    config = SODConfig(str(tmp_path), use_cpu=True)
    assert config.gradient_checkpointing is True  # before: False (transformers' default)
    assert config.bf16 is False  # CPU: TRL would fail without use_cpu, or autocast on the CPU
    assert SODConfig(str(tmp_path), use_cpu=True, gradient_checkpointing=False).gradient_checkpointing is False
    from sod_trainer import grpo_compat

    gpu_like = SODConfig(str(tmp_path), use_cpu=True)
    gpu_like.bf16, gpu_like.use_cpu = None, False
    original = grpo_compat._bf16_is_available
    grpo_compat._bf16_is_available = lambda: True
    try:
        grpo_compat.resolve_bf16(gpu_like)
    finally:
        grpo_compat._bf16_is_available = original
    assert gpu_like.bf16 is True  # on a bf16 accelerator: TRL's `not fp16`


@pytest.mark.parametrize(("overrides", "steps", "batch"), [
    (dict(generation_batch_size=32), 4, 32),  # before: refused unless steps_per_generation was set to match
    (dict(steps_per_generation=2), 2, 16),
    (dict(), 1, 8),
])
def test_generation_batch_size_or_steps_per_generation_alone_as_trl(overrides, steps, batch, tmp_path):
    config = SODConfig(str(tmp_path), use_cpu=True, per_device_train_batch_size=8, **overrides)
    trl_config = GRPOConfig(str(tmp_path), use_cpu=True, per_device_train_batch_size=8, **overrides)
    assert (config.steps_per_generation, config.generation_batch_size) == (steps, batch)
    assert (trl_config.steps_per_generation, trl_config.generation_batch_size) == (steps, batch)


def test_string_model_is_loaded_as_trls_create_model_from_path(tokenizer, tmp_path):
    make_tiny_model(tokenizer).save_pretrained(tmp_path / "student")
    make_tiny_model(tokenizer, hidden=96).save_pretrained(tmp_path / "teacher")
    config = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], grpo_coef=0.0,
                  per_device_train_batch_size=2, num_generations=2, teacher_model_name_or_path=str(tmp_path / "teacher"))
    trainer = SODTrainer(model=str(tmp_path / "student"), args=SODConfig(
        **config, model_init_kwargs={"dtype": "bfloat16"}), processing_class=tokenizer)
    assert trainer.model.dtype == torch.bfloat16 and type(trainer.model).__name__ == "Qwen3ForCausalLM"
    trainer.close()
    with pytest.raises(ValueError, match="Invalid `dtype`"):  # TRL's check; before: torch.float64 was accepted
        SODTrainer(model=str(tmp_path / "student"), args=SODConfig(**config, model_init_kwargs={"dtype": "float64"}),
                   processing_class=tokenizer)


def test_a_reward_function_in_teachers_place_is_refused(tokenizer, tmp_path):
    """GRPOTrainer(model, reward_funcs, args) positionally: SODTrainer's second argument is the teacher."""
    with pytest.raises(TypeError, match="pass reward_funcs=... by keyword"):
        SODTrainer(make_tiny_model(tokenizer), len, SODConfig(str(tmp_path), use_cpu=True), processing_class=tokenizer)


# ------------------------------------------------------------------------------------- TRL imports and the pin

DOCUMENTED_MODULES = {"trl.generation.vllm_client", "trl.generation.vllm_generation"}  # TRL's vLLM docs import these


def _trl_imports() -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trl":
                found.update((node.module, alias.name) for alias in node.names)
    return found


def _is_public(module: str, name: str) -> bool:
    """Exported by ``trl`` or one of its packages on the way to ``module`` (TRL's lazy ``__init__`` exports)."""
    if module in DOCUMENTED_MODULES:
        return True
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        package = importlib.import_module(".".join(parts[:depth]))
        if hasattr(package, "__path__") and name in dir(package):
            return True
    return False


def test_private_trl_imports_keep_the_trl_pin_tight_and_are_listed_in_the_docs():
    private = sorted(name for module, name in _trl_imports() if not _is_public(module, name))
    pyproject = (ROOT / "pyproject.toml").read_text()
    requirement = re.search(r'"trl([^"]*)"', pyproject).group(1)
    if private:
        import trl

        major, minor = trl.__version__.split(".")[:2]
        assert f"<{major}.{int(minor) + 1}" in requirement, (
            f"src/ imports TRL names that TRL does not export ({private}); keep the pin below the next minor")
        docs = PAGE.read_text().split("## Which TRL version")[1]
        for name in private:
            assert f"`{name}`" in docs, f"docs/coming_from_trl.md does not list the private TRL import {name}"


def test_the_grpo_scripts_config_runs_unchanged_in_sodconfig_on_the_docs_page(tmp_path):
    """The side-by-side scripts of docs/coming_from_trl.md: every GRPOConfig argument of the TRL script is
    accepted by SODConfig with the same value, and the two scripts differ only where the page says."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    grpo = next(block for block in blocks if "GRPOTrainer(" in block)
    sod = next(block for block in blocks if "SODTrainer(" in block)

    def call_keywords(source: str, name: str) -> dict:
        call = next(node for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name)
        return {keyword.arg: ast.unparse(keyword.value) for keyword in call.keywords}

    grpo_config, sod_config = call_keywords(grpo, "GRPOConfig"), call_keywords(sod, "SODConfig")
    assert set(sod_config) - set(grpo_config) == {"teacher_model_name_or_path"}  # the teacher is what SOD adds
    assert {k: v for k, v in grpo_config.items() if k != "output_dir"} == \
        {k: v for k, v in sod_config.items() if k not in ("output_dir", "teacher_model_name_or_path")}
    assert call_keywords(grpo, "GRPOTrainer") == call_keywords(sod, "SODTrainer")  # same trainer arguments
    values = {key: ast.literal_eval(value) for key, value in grpo_config.items()}
    values.update(output_dir=str(tmp_path), use_cpu=True, push_to_hub=False)  # no Hub from a test
    config = SODConfig(**values)
    assert (config.num_generations, config.max_completion_length, config.learning_rate) == (8, 4096, 1e-6)
    assert grpo.splitlines()[-1] == sod.splitlines()[-1]  # the same push_to_hub(dataset_name=...) call
