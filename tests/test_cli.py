"""The `sod` command and the recipes: parsing, launcher forwarding, overrides, help, env, and a real toy run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from transformers import TrainingArguments

from sod_trainer import cli
from sod_trainer.config import SODConfig
from sod_trainer.objective import STEP_WEIGHTING_SCHEMES
from sod_trainer.scripts.train import (
    REWARD_NAMES,
    LaunchArguments,
    SODScriptArguments,
    make_parser,
    resolve_accelerate_config,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
TOY = ROOT / "examples" / "recipes" / "toy.yaml"
BASE = ROOT / "examples" / "recipes" / "sod_qwen3_1.7b.yaml"


def _fields() -> dict[str, str]:
    from trl import ModelConfig

    owners = {}
    for cls in (SODScriptArguments, SODConfig, ModelConfig, LaunchArguments):
        for f in dataclasses.fields(cls):
            if f.init:
                owners.setdefault(f.name, cls.__name__)
    return owners


def _parse(argv):
    return make_parser().parse_args_and_config(argv)


def _cpu_flags(recipe: Path) -> list[str]:
    """The paper recipes ask for bf16, which transformers refuses on a machine without a GPU unless use_cpu."""
    import torch

    return [] if torch.cuda.is_available() else ["--use_cpu", "true"]


# ------------------------------------------------------------------------------------- recipes


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    for expected in ["toy.yaml", "sod_qwen3_0.6b.yaml", "sod_qwen3_1.7b.yaml", "opd_qwen3_1.7b.yaml",
                     "naive_opd_qwen3_1.7b.yaml", "grpo_qwen3_1.7b.yaml", "sod_no_grpo_qwen3_1.7b.yaml",
                     "decay_qwen3_1.7b.yaml", "mask_after_error_qwen3_1.7b.yaml", "sod_uncapped_qwen3_1.7b.yaml",
                     "sod_lora_qwen3_1.7b.yaml"]:
        assert expected in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_with_no_unknown_keys_and_valid_values(recipe):
    text = recipe.read_text()
    assert text.startswith("#"), "a recipe starts with a comment giving the command that runs it"
    assert f"sod train --config examples/recipes/{recipe.name}" in text.split("\n\n")[0]
    config = yaml.safe_load(text)
    owners = _fields()
    unknown = sorted(set(config) - set(owners) - {"env"})
    assert not unknown, f"{recipe.name}: keys no dataclass knows: {unknown}"

    script_args, training_args, model_args, launch_args = _parse(["--config", str(recipe), *_cpu_flags(recipe)])
    # every YAML value arrived in its dataclass
    objects = {"SODScriptArguments": script_args, "SODConfig": training_args, "ModelConfig": model_args,
               "LaunchArguments": launch_args}
    for key, value in config.items():
        if key == "env":
            continue
        got = getattr(objects[owners[key]], key)
        if key == "report_to":
            continue  # TrainingArguments turns "none" into []
        assert got == value or (isinstance(value, list) and list(got) == value), (recipe.name, key, got, value)
    assert training_args.step_weighting in STEP_WEIGHTING_SCHEMES
    assert model_args.model_name_or_path and (training_args.teacher_model_name_or_path or
                                              training_args.teacher_server_url)
    assert script_args.dataset_name
    for name in script_args.reward_funcs:
        assert name in REWARD_NAMES or "." in name
    if launch_args.accelerate_config:
        assert Path(resolve_accelerate_config(launch_args.accelerate_config)).is_file()
    # whole groups per process, and a batch that splits into optimizer steps
    per_process = training_args.per_device_train_batch_size * training_args.steps_per_generation
    assert per_process % training_args.num_generations == 0


def test_paper_recipe_matches_the_paper_hyperparameters():
    _, args, model_args, launch = _parse(["--config", str(BASE), *_cpu_flags(BASE)])
    processes = launch.num_processes
    completions_per_step = args.per_device_train_batch_size * processes * args.gradient_accumulation_steps
    completions_per_rollout = args.per_device_train_batch_size * processes * args.steps_per_generation
    assert (processes, args.num_generations) == (8, 16)
    assert completions_per_step // args.num_generations == 16  # prompts per optimizer mini-batch
    assert completions_per_rollout // args.num_generations == 64  # prompts per rollout batch
    assert args.steps_per_generation // args.gradient_accumulation_steps == 4  # optimizer steps per rollout
    assert (args.learning_rate, args.lr_scheduler_type, args.weight_decay, args.max_grad_norm) == \
        (1e-6, "constant", 0.01, 1.0)
    assert (args.max_prompt_length, args.max_completion_length, args.max_tool_calling_iterations) == (2560, 20480, 16)
    assert (args.max_tool_response_chars, args.temperature, args.top_p) == (256, 1.0, 1.0)
    assert (args.epsilon, args.epsilon_high, args.dual_clip, args.sod_epsilon, args.sod_delta) == \
        (0.2, 0.28, 3.0, 1e-6, 0.2)
    assert (args.grpo_coef, args.opd_coef, args.num_iterations, args.loss_type) == (1.0, 1.0, 1, "dapo")
    assert args.max_steps == 150 * 4  # the 1.7B checkpoint: 150 rollout batches
    assert model_args.model_name_or_path == "Qwen/Qwen3-1.7B"


ABLATIONS = {
    "opd_qwen3_1.7b.yaml": {"step_weighting": "uniform"},
    "naive_opd_qwen3_1.7b.yaml": {"step_weighting": "uniform", "grpo_coef": 0.0},
    "grpo_qwen3_1.7b.yaml": {"opd_coef": 0.0},
    "sod_no_grpo_qwen3_1.7b.yaml": {"grpo_coef": 0.0},
    "decay_qwen3_1.7b.yaml": {"step_weighting": "decay"},
    "mask_after_error_qwen3_1.7b.yaml": {"step_weighting": "mask_after_error"},
    "sod_uncapped_qwen3_1.7b.yaml": {"step_weighting": "sod_uncapped"},
    "sod_lora_qwen3_1.7b.yaml": {"use_peft": True, "lora_r": 64, "lora_alpha": 128, "lora_dropout": 0.0,
                                 "lora_target_modules": "all-linear", "learning_rate": 1e-5},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_recipes_differ_from_the_sod_recipe_only_where_meant_to(name):
    base = yaml.safe_load(BASE.read_text())
    other = yaml.safe_load((ROOT / "examples" / "recipes" / name).read_text())
    changed = {k: other.get(k) for k in set(base) | set(other)
               if base.get(k) != other.get(k) and k not in ("output_dir", "run_name")}
    assert changed == ABLATIONS[name]
    assert other["output_dir"] != base["output_dir"] and other["run_name"] != base["run_name"]


# ------------------------------------------------------------------------------------- launching


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, command, env=None, **kwargs):
        self.calls.append((command, env))
        return subprocess.CompletedProcess(command, 0)


def _write_recipe(tmp_path, **extra) -> Path:
    config = yaml.safe_load(TOY.read_text())
    config.update(extra)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_launcher_keys_go_to_accelerate_launch_and_flags_override_the_yaml(tmp_path, monkeypatch):
    recipe = _write_recipe(tmp_path, env={"SOD_TEST_EXPORTED": "from-yaml"}, gpu_ids="0,1",
                           launch_args="--rdzv_backend c10d")
    monkeypatch.delenv("SOD_TEST_EXPORTED", raising=False)
    recorder = _Recorder()
    monkeypatch.setattr(cli.subprocess, "run", recorder)
    argv = ["train", "--config", str(recipe), "--num-processes", "4", "--max_steps", "7",
            "--accelerate_config", "zero2", "--mixed_precision=bf16", "--learning_rate", "3e-5"]
    assert cli.main(argv) == 0
    (command, env), = recorder.calls
    assert command[:3] == [sys.executable, "-m", cli.LAUNCHER_MODULE]  # accelerate launch, minus its traceback
    script = cli.training_script_path()
    split = command.index(script)
    launch, script_argv = command[3:split], command[split + 1:]

    def value(flag):
        return launch[launch.index(flag) + 1]

    assert value("--num_processes") == "4"  # the flag beat the YAML's 1
    assert value("--mixed_precision") == "bf16"  # --name=value form, beat the YAML's "no"
    assert value("--gpu_ids") == "0,1"  # from the YAML
    assert Path(value("--config_file")) == ROOT / "examples" / "accelerate_configs" / "zero2.yaml"
    assert launch[-2:] == ["--rdzv_backend", "c10d"]
    assert "--num_machines" not in launch  # an accelerate config was given: nothing guessed
    # the script gets the recipe and the training flags, never the launcher's
    assert script_argv == ["--config", str(recipe), "--max_steps", "7", "--learning_rate", "3e-5"]
    assert env["SOD_TEST_EXPORTED"] == "from-yaml"  # the env: block is exported
    # what every launched process parses: the flags override the YAML
    _, training_args, _, launch_args = _parse(script_argv)
    assert training_args.max_steps == 7 and training_args.learning_rate == 3e-5
    assert training_args.num_generations == 4  # from the YAML
    assert launch_args.num_processes == 1  # the YAML's value; only `sod train` uses it


def test_without_any_accelerate_config_the_guessed_values_are_filled_in(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_default_accelerate_config_exists", lambda: False)
    recorder = _Recorder()
    monkeypatch.setattr(cli.subprocess, "run", recorder)
    assert cli.main(["train", "--config", str(TOY)]) == 0
    (command, _), = recorder.calls
    launch = command[3:command.index(cli.training_script_path())]
    assert launch == ["--num_processes", "1", "--mixed_precision", "no", "--num_machines", "1",
                      "--dynamo_backend", "no"]


def test_launcher_none_trains_in_this_process(monkeypatch):
    from sod_trainer.scripts import train

    seen = {}
    monkeypatch.setattr(train, "main", lambda s, t, m, l, **kw: seen.update(steps=t.max_steps, launcher=l.launcher))
    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: pytest.fail("must not launch a subprocess"))
    assert cli.main(["train", "--config", str(TOY), "--launcher", "none", "--max_steps", "3"]) == 0
    assert seen == {"steps": 3, "launcher": "none"}


def test_unknown_key_and_bad_value_fail_before_launching(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: pytest.fail("must not launch"))
    assert cli.main(["train", "--config", str(_write_recipe(tmp_path, step_wieghting="sod"))]) == 2
    err = capsys.readouterr().err
    assert "'step_wieghting'" in err and "Did you mean 'step_weighting'?" in err
    assert "dataclass" not in err  # before: "... add them to the dataclass, or set `fail_with_unknown_args=False`"
    assert cli.main(["train", "--config", str(TOY), "--num_genrations", "4"]) == 2  # a misspelt flag, too
    err = capsys.readouterr().err
    assert "'num_genrations'" in err and "Did you mean 'num_generations'" in err and "dataclass" not in err
    assert cli.main(["train", "--config", str(_write_recipe(tmp_path, accelerate_config="nope"))]) == 2
    assert "accelerate_config='nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects a value outside the field's choices
        cli.main(["train", "--config", str(TOY), "--step_weighting", "sideways"])


def test_train_help_lists_every_field_with_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    missing = [name for name in _fields() if f"--{name}" not in text]
    assert not missing
    for cls in (SODConfig, SODScriptArguments, LaunchArguments):
        for f in dataclasses.fields(cls):
            if f.name in {g.name for g in dataclasses.fields(TrainingArguments)} and cls is SODConfig:
                continue  # TrainingArguments' own help texts, reformatted by argparse
            help_text = f.metadata.get("help")
            if help_text:
                assert " ".join(help_text.split())[:40].replace("%%", "%") in text, f.name


# ------------------------------------------------------------------------------------- other commands


def test_env_prints_the_stack(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    import torch
    import transformers
    import trl

    for package, version in (("torch", torch.__version__), ("transformers", transformers.__version__),
                             ("trl", trl.__version__)):
        assert package in out and version.split("+")[0] in out
    assert "sod-trainer" in out and "Python" in out and "Accelerators" in out


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "demo", "env"):
        assert command in out
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert "sod-trainer" in capsys.readouterr().out


@pytest.mark.parametrize(("command", "module"), [("eval", "sod_trainer.evaluation"), ("demo", "sod_trainer.toy.demo")])
def test_eval_and_demo_delegate_to_their_module(command, module, monkeypatch):
    received = []
    fake = types.ModuleType(module)
    fake.main = lambda argv: received.append(argv) or 0
    monkeypatch.setitem(sys.modules, module, fake)
    assert cli.main([command, "--foo", "1"]) == 0
    assert received == [["--foo", "1"]]


@pytest.mark.parametrize(("command", "module"), [("eval", "sod_trainer.evaluation"), ("demo", "sod_trainer.toy.demo")])
def test_eval_and_demo_say_clearly_when_missing(command, module, monkeypatch, capsys):
    def missing(name, *args, **kwargs):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main([command]) == 2
    assert f"sod {command}" in capsys.readouterr().err
    fake = types.ModuleType(module)  # present but without main()
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    assert cli.main([command]) == 2
    assert "main(argv)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- end to end


def test_toy_recipe_trains_through_sod_train_end_to_end(tmp_path):
    """`sod train` → `accelerate launch` → the training script, on the offline toy world: two optimizer steps."""
    output = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "sod_trainer.cli", "train", "--config", str(TOY), "--max_steps", "2",
               "--output_dir", str(output), "--per_device_train_batch_size", "4", "--max_completion_length", "48",
               "--max_tool_calling_iterations", "2", "--max_train_samples", "16"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "sod train: accelerate launch" in log  # it went through the launcher
    assert "'loss'" in log and "'divergence/step_1'" in log  # SOD metrics were logged for the steps
    assert "Training completed." in log
    assert (output / "config.json").is_file() and any(output.glob("*.safetensors"))


def test_local_models_and_data_with_lora_in_process(tmp_path, tokenizer):
    """The non-toy path: student and teacher from local folders, a JSONL of problems, LoRA from ModelConfig."""
    import json

    from conftest import make_tiny_model

    from sod_trainer.scripts.train import run

    make_tiny_model(tokenizer).save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    make_tiny_model(tokenizer, hidden=96, seed=1).save_pretrained(tmp_path / "teacher")
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} * 7?", "answer": str(7 * i), "source": "x"}) + "\n"
                            for i in range(8)))
    recipe = tmp_path / "local.yaml"
    recipe.write_text(yaml.safe_dump({
        "launcher": "none", "model_name_or_path": str(tmp_path / "student"),
        "teacher_model_name_or_path": str(tmp_path / "teacher"), "dataset_name": str(data),
        "reward_funcs": ["math_strict"], "use_peft": True, "lora_r": 4, "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"], "output_dir": str(tmp_path / "out"), "max_steps": 1,
        "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 24,
        "max_tool_calling_iterations": 2, "use_cpu": True, "report_to": "none", "save_strategy": "no",
        "learning_rate": 1e-3,
    }))
    trainer = run(["--config", str(recipe)])
    assert trainer.state.global_step == 1
    row = trainer.train_dataset[0]
    assert row["source"] == "x" and row["prompt"][-1]["content"].startswith("What is 0 * 7?\n\nPlease reason")
    assert type(trainer.model).__name__.startswith("Peft")
    assert trainer.args.model_init_kwargs["dtype"] == "float32"  # filled from ModelConfig
    assert (tmp_path / "out" / "adapter_config.json").is_file()  # LoRA saves adapters


# ------------------------------------------------------------------------------------- a failing run


def test_failing_training_ends_with_the_child_error_and_exit_code(monkeypatch, capsys):
    """Before: accelerate's CalledProcessError traceback was the last thing printed, not the training error."""
    from sod_trainer.scripts.train import ERROR_FILE_VARIABLE

    def failing_launch(command, env):
        with open(env[ERROR_FILE_VARIABLE], "a") as handle:  # what run_as_script records in the child
            handle.write("0\tFileNotFoundError: Could not load the dataset 'nope.jsonl'\n")
        return types.SimpleNamespace(returncode=3)

    monkeypatch.setattr(cli.subprocess, "run", failing_launch)
    assert cli.main(["train", "--config", str(TOY)]) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("sod train: error: training failed with exit code 3: FileNotFoundError: Could not load the "
                    "dataset 'nope.jsonl'")


def test_the_training_script_records_its_error_and_exits_1(tmp_path, monkeypatch, capsys):
    from sod_trainer.scripts import train

    error_file = tmp_path / "error.txt"
    monkeypatch.setenv(train.ERROR_FILE_VARIABLE, str(error_file))
    monkeypatch.setattr(train, "main", lambda *args, **kwargs: (_ for _ in ()).throw(ValueError("bad\nthing")))
    assert train.run_as_script(["--config", str(TOY)]) == 1
    assert error_file.read_text() == "0\tValueError: bad thing\n"
    assert "Traceback" in capsys.readouterr().err  # the child still prints its traceback


def test_launcher_turns_launch_failures_into_the_child_exit_code(monkeypatch):
    import accelerate.commands.launch as accelerate_launch

    from sod_trainer.scripts import launch

    def fail(args):
        raise subprocess.CalledProcessError(returncode=7, cmd=["python", "train.py"])

    monkeypatch.setattr(accelerate_launch, "launch_command", fail)
    assert launch.main(["--num_processes", "1", "train.py"]) == 7
    failure = types.SimpleNamespace(failures={1: types.SimpleNamespace(exitcode=9), 0: types.SimpleNamespace(exitcode=4)})
    assert launch.child_exit_code(failure) == 4  # torchrun's ChildFailedError: the first rank's code


def test_launcher_none_failure_ends_with_the_error(monkeypatch, capsys):
    from sod_trainer.scripts import train

    monkeypatch.setattr(train, "main", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("teacher OOM")))
    assert cli.main(["train", "--config", str(TOY), "--launcher", "none"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sod train: error: training failed: RuntimeError: teacher OOM"


@pytest.mark.slow
def test_failing_sod_train_end_to_end_prints_no_launcher_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "sod_trainer.cli", "train", "--config", str(TOY), "--dataset_name",
               str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "CalledProcessError" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sod train: error: training failed with exit code 1: FileNotFoundError: Could not load")


# ------------------------------------------------------------------------------------- sod eval / sod demo flags


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_eval_takes_every_rollout_option_as_underscore_flags_with_help(capsys, tmp_path):
    """Before: argparse with dashed flags only, several without help, and no --config."""
    from sod_trainer.evaluation import EvaluationConfig, build_parser, config_from_args
    from sod_trainer.evaluation.arguments import EvalRolloutArguments, EvalScriptArguments

    text = _help("eval", capsys)
    rollout_names = {f.name for f in dataclasses.fields(EvaluationConfig)} - {"keep_text"}
    assert rollout_names <= {f.name for f in dataclasses.fields(EvalRolloutArguments)}  # every rollout option
    for cls in (EvalScriptArguments, EvalRolloutArguments):
        for f in dataclasses.fields(cls):
            assert f"--{f.name}" in text, f.name
            assert " ".join(f.metadata["help"].split())[:30] in text, f"--{f.name} has no help"
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(yaml.safe_dump({"model": "m", "benchmark": "toy", "num_samples": 4, "max_turns": 3}))
    parsed = build_parser().parse_args_and_config(
        ["--config", str(recipe), "--tool_call_format", "json", "--chat_template_kwargs", '{"enable_thinking": false}',
         "--max-tool-response-chars", "99", "--seeds", "1", "2", "--system_prompt", "none"])
    config = config_from_args(parsed)
    assert (config.num_samples, config.max_turns, config.tool_call_format, config.chat_template_kwargs,
            config.max_tool_response_chars, config.seeds, config.system_prompt) == (
        4, 3, "json", {"enable_thinking": False}, 99, (1, 2), None)


def test_demo_takes_underscore_flags_with_kebab_aliases_and_help(capsys, monkeypatch):
    from sod_trainer.toy import demo

    text = _help("demo", capsys)
    for f in dataclasses.fields(demo.DemoArguments):
        assert f"--{f.name}" in text and " ".join(f.metadata["help"].split())[:30] in text, f.name
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda output_dir, quick, teacher_path, **kw: seen.update(
        output_dir=output_dir, quick=quick, **kw))
    assert cli.main(["demo", "--quick", "--output_dir", "d", "--eval-problems", "3", "--compare", "uniform"]) == 0
    assert seen == {"output_dir": "d", "quick": True, "eval_problems": 3, "compare": ["uniform"]}


@pytest.mark.parametrize(("argv", "hint"), [
    (["eval", "--model", "m", "--benchmark", "toy", "--num_smaples", "3"], "Did you mean 'num_samples'?"),
    (["demo", "--eval_problmes", "3"], "Did you mean 'eval_problems'?"),
])
def test_eval_and_demo_name_a_misspelt_option(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_info:  # sod eval raises SystemExit(2); sod demo returns 2
        code = cli.main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert hint in err and f"sod {argv[0]} --help" in err and "dataclass" not in err
