"""A TRL user's environments and tools run through SODTrainer.train() unchanged, on Qwen3's own chat template.

The environment classes below are written as TRL's docs write them (``reset(**kwargs)``, public methods with type
hints and Google docstrings are the tools, an optional ``get_reward``); the model is scripted (tests/scripted.py), so
every tool call, observation and reward is known exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from conftest import make_tiny_model
from scripted import ScriptedBackend
from sod_trainer import SODConfig, SODTrainer, ToolEnvironment, ToolResult

EOS = "<|im_end|>"


# ---------------------------------------------------------------------------------------------- TRL-style environments
class IncrementEnv:
    def __init__(self):
        self._counter = 0

    def reset(self, **kwargs) -> None:
        self._counter = 0
        self._target = kwargs["target"]

    def increment(self, a: int) -> int:
        """
        Increment the counter by a specified value.

        Args:
            a: The value to increment by.

        Returns:
            The incremented counter.
        """
        self._counter += a
        return self._counter

    def get_reward(self) -> float:
        return 1.0 if self._counter == self._target else 0.0


class GuessEnv:
    def reset(self, secret: str, **kwargs) -> str:
        self._secret = secret
        self._solved = False
        return " Use the guess tool."

    def guess(self, word: str) -> str:
        """
        Guess the secret word.

        Args:
            word: The guessed word.

        Returns:
            Whether the guess is correct.
        """
        self._solved = word == self._secret
        return "correct" if self._solved else "wrong"


def solved_reward(environments, **kwargs):
    return [1.0 if env._solved else 0.0 for env in environments]


def multiply(a: int, b: int) -> int:
    """
    Multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b


def call(name: str, **arguments) -> str:
    """A Qwen3 tool call as the model writes it."""
    import json

    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def tool_glue(*contents: str) -> str:
    """What Qwen3's template renders for the tool messages after an assistant turn (up to the next assistant)."""
    responses = "\n".join(f"<tool_response>\n{c}\n</tool_response>" for c in contents)
    return f"\n<|im_start|>user\n{responses}<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def qwen3_base():
    """The tiny test tokenizer with Qwen3's tool tokens (added, not special, as in Qwen3) and Qwen3's template."""
    from trl.chat_template_utils import qwen3_chat_template

    from sod_trainer.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"])
    tokenizer.chat_template = qwen3_chat_template
    return tokenizer


@pytest.fixture
def qwen3(qwen3_base):
    return copy.deepcopy(qwen3_base)


def make_trainer(tokenizer, tmp_path, dataset, scripts, **kwargs):
    config = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=200, max_steps=1, learning_rate=1e-3, report_to=[], use_cpu=True,
                  save_strategy="no", seed=0, max_tool_calling_iterations=4, logging_steps=1)
    config.update(kwargs.pop("config", {}))
    trainer = SODTrainer(model=make_tiny_model(tokenizer, seed=0), teacher_model=make_tiny_model(tokenizer, seed=1),
                         args=SODConfig(**config), train_dataset=dataset, processing_class=tokenizer, **kwargs)
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, scripts)
    return trainer


def record(trainer):
    """Capture every rollout batch's trajectories and rewards while train() runs."""
    seen = {"trajectories": [], "rewards": []}
    rollout, rewards = trainer.rollout_engine.rollout, trainer.scorer.rewards

    def recording_rollout(*args, **kwargs):
        trajectories = rollout(*args, **kwargs)
        seen["trajectories"].extend(trajectories)
        return trajectories

    def recording_rewards(*args, **kwargs):
        per_function, values, metrics = rewards(*args, **kwargs)
        seen["rewards"].extend(values.tolist())
        return per_function, values, metrics

    trainer.rollout_engine.rollout = recording_rollout
    trainer.scorer.rewards = recording_rewards
    return seen


def segments(tokenizer, trajectory):
    """The completion as (text, sampled) runs: model tokens (assistant_mask 1) and inserted ones (0)."""
    runs, start = [], 0
    ids, mask = trajectory.completion_ids, trajectory.assistant_mask
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            runs.append((ids[start:end], mask[start]))
            start = end
    return [(tokenizer.decode(run), bool(sampled)) for run, sampled in runs]


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------------------------------------- environments
def test_environment_with_get_reward_trains_with_exact_calls_observations_and_rewards(qwen3, tmp_path):
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "alpha: reach 5."}], "target": 5},
        {"prompt": [{"role": "user", "content": "beta: reach 7."}], "target": 7},
    ])
    scripts = {"alpha:": [call("increment", a=2) + "\n" + call("increment", a=3), "Done."],
               "beta:": [call("increment", a=4), call("increment", a=4), "Done."]}
    trainer = make_trainer(qwen3, tmp_path, dataset, scripts, environment_factory=IncrementEnv)
    seen = record(trainer)
    trainer.train()

    alpha, beta = (next(t for t in seen["trajectories"] if key in qwen3.decode(t.prompt_ids)) for key in scripts)
    prompt = qwen3.decode(alpha.prompt_ids)
    assert '"name": "increment"' in prompt and "The value to increment by." in prompt  # schema from the docstring
    # two calls in one turn: both run, both results come back in one rendering of the tool messages
    assert segments(qwen3, alpha) == [(scripts["alpha:"][0] + EOS, True), (tool_glue("2", "5"), False),
                                      ("Done." + EOS, True)]
    assert segments(qwen3, beta) == [(scripts["beta:"][0] + EOS, True), (tool_glue("4"), False),
                                     (scripts["beta:"][1] + EOS, True), (tool_glue("8"), False),
                                     ("Done." + EOS, True)]
    glue_ids = encode(qwen3, tool_glue("2", "5"))
    start = alpha.turns[0].end
    assert alpha.completion_ids[start:start + len(glue_ids)] == glue_ids  # never re-tokenized: the ids themselves
    assert alpha.assistant_mask[start:start + len(glue_ids)] == [0] * len(glue_ids)
    assert alpha.turns[0].metadata["tool_calls"] == 2 and alpha.num_function_calls == 2
    assert [t.stop_reason for t in (alpha, beta)] == ["answer", "answer"]
    # get_reward() is the only reward source: 1 when the counter reached the target (alpha 5 == 5, beta 8 != 7)
    assert sorted(seen["rewards"]) == [0.0, 0.0, 1.0, 1.0]
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert log["rewards/IncrementEnv/mean"] == pytest.approx(0.5)
    # steps for SOD are the maximal runs of model tokens, whatever kind of tool produced the observations
    step_ids = trainer.scorer.segmenter(torch.tensor([beta.completion_ids]), torch.tensor([beta.assistant_mask]))[0]
    expected = [k for k, turn in enumerate(beta.turns) for _ in range(turn.end - turn.start)]
    assert step_ids[torch.tensor(beta.assistant_mask).bool()].tolist() == expected
    assert (step_ids[~torch.tensor(beta.assistant_mask).bool()] == -1).all()


def test_environment_whose_reset_returns_text_and_a_reward_reading_environments(qwen3, tmp_path):
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "alpha: guess the fruit."}], "secret": "apple"},
        {"prompt": [{"role": "user", "content": "beta: guess the fruit."}], "secret": "pear"},
    ])
    scripts = {"alpha:": [call("guess", word="apple"), "I won."],
               "beta:": [call("guess", word="plum"), "I lost."]}
    trainer = make_trainer(qwen3, tmp_path, dataset, scripts, environment_factory=GuessEnv,
                           reward_funcs=[solved_reward])
    seen = record(trainer)
    trainer.train()

    alpha, beta = (next(t for t in seen["trajectories"] if key in qwen3.decode(t.prompt_ids)) for key in scripts)
    # reset's text is appended to the last user message
    assert "<|im_start|>user\nalpha: guess the fruit. Use the guess tool.<|im_end|>" in qwen3.decode(alpha.prompt_ids)
    assert segments(qwen3, alpha) == [(scripts["alpha:"][0] + EOS, True), (tool_glue("correct"), False),
                                      ("I won." + EOS, True)]
    assert segments(qwen3, beta)[1] == (tool_glue("wrong"), False)
    assert sorted(seen["rewards"]) == [0.0, 0.0, 1.0, 1.0]
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert log["rewards/solved_reward/mean"] == pytest.approx(0.5)


def test_tools_list_runs_functions_and_returns_errors_as_trl_does(qwen3, tmp_path):
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "alpha: 3*4?"}], "answer": "12"},
        {"prompt": [{"role": "user", "content": "beta: 3*4?"}], "answer": "12"},
    ])
    scripts = {"alpha:": [call("multiply", a=3, b=4), "12"],
               "beta:": [call("divide", a=3, b=4), call("multiply", a=3, c=4), "7"]}

    def exact(completions, answer, **kwargs):  # as TRL: a conversational completion is a list of messages
        return [1.0 if c[-1]["content"].strip().endswith(a) else 0.0 for c, a in zip(completions, answer)]

    trainer = make_trainer(qwen3, tmp_path, dataset, scripts, tools=[multiply], reward_funcs=[exact],
                           config=dict(max_completion_length=400))
    seen = record(trainer)
    trainer.train()

    alpha, beta = (next(t for t in seen["trajectories"] if key in qwen3.decode(t.prompt_ids)) for key in scripts)
    assert '"name": "multiply"' in qwen3.decode(alpha.prompt_ids)
    assert segments(qwen3, alpha)[1] == (tool_glue("12"), False)
    assert not alpha.turns[0].tool_error
    # an unknown tool and a bad argument: the error goes back to the model, the call counts as failed
    assert segments(qwen3, beta)[1] == (tool_glue("{'error': 'Tool divide not found.'}"), False)
    error = "multiply() got an unexpected keyword argument 'c'"
    assert segments(qwen3, beta)[3] == (tool_glue(f"{{'error': \"{error}\"}}"), False)
    assert [turn.tool_error for turn in beta.turns] == [True, True, False]
    assert beta.num_function_call_failures == 2 and beta.first_error_turn == 0
    assert sorted(seen["rewards"]) == [0.0, 0.0, 1.0, 1.0]


def test_environment_dict_selects_each_rows_environment_by_its_column(qwen3, tmp_path):
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "alpha: reach 5."}], "environment": "counter", "target": 5,
         "secret": None},
        {"prompt": [{"role": "user", "content": "beta: guess."}], "environment": "game", "target": None,
         "secret": "fig"},
    ])
    scripts = {"alpha:": [call("increment", a=5), "Done."], "beta:": [call("guess", word="fig"), "Done."]}
    resets = []

    class RecordingGuessEnv(GuessEnv):
        def reset(self, **kwargs) -> str:
            resets.append(sorted(kwargs))
            return super().reset(**kwargs)

    trainer = make_trainer(qwen3, tmp_path, dataset, scripts, reward_funcs=[lambda environments, **kw: [
        1.0 if isinstance(e, GuessEnv) and e._solved else None for e in environments]],
        environment_factory={"counter": IncrementEnv, "game": RecordingGuessEnv})
    seen = record(trainer)
    trainer.train()

    alpha, beta = (next(t for t in seen["trajectories"] if key in qwen3.decode(t.prompt_ids)) for key in scripts)
    alpha_prompt, beta_prompt = qwen3.decode(alpha.prompt_ids), qwen3.decode(beta.prompt_ids)
    # only the selected environment's tools are in its prompt
    assert '"name": "increment"' in alpha_prompt and '"name": "guess"' not in alpha_prompt
    assert '"name": "guess"' in beta_prompt and '"name": "increment"' not in beta_prompt
    assert type(alpha.environment) is IncrementEnv and type(beta.environment) is RecordingGuessEnv
    assert segments(qwen3, alpha)[1] == (tool_glue("5"), False) and segments(qwen3, beta)[1] == (tool_glue("correct"),
                                                                                               False)
    assert resets and all("environment" not in keys for keys in resets)  # the control column does not reach reset
    # IncrementEnv's get_reward scores its own rollouts (1.0) and is None for the game's; the lambda the other way
    assert sorted(seen["rewards"]) == [1.0, 1.0, 1.0, 1.0]
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert log["rewards/IncrementEnv/mean"] == pytest.approx(1.0)


def test_unknown_environment_name_in_the_dataset_is_an_error_at_construction(qwen3, tmp_path):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}], "environment": "chess", "target": 1}])
    with pytest.raises(ValueError, match=r"environment='chess'.*Expected one of: \['counter'\]"):
        make_trainer(qwen3, tmp_path, dataset, {}, environment_factory={"counter": IncrementEnv},
                     config=dict(per_device_train_batch_size=2))


# ---------------------------------------------------------------------------------------------- tool rounds
def test_max_tool_calling_iterations_1_runs_the_tool_and_shows_its_output(qwen3, tmp_path):
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "alpha: reach 2."}], "target": 2},
        {"prompt": [{"role": "user", "content": "beta: reach 4."}], "target": 4},
    ])
    again = call("increment", a=2)
    scripts = {"alpha:": [again, again, again], "beta:": [again, again, again]}
    trainer = make_trainer(qwen3, tmp_path, dataset, scripts, environment_factory=IncrementEnv,
                           config=dict(max_tool_calling_iterations=1))
    seen = record(trainer)
    trainer.train()

    alpha = next(t for t in seen["trajectories"] if "alpha:" in qwen3.decode(t.prompt_ids))
    # one tool round: the call runs, its output is shown, the model generates again; that turn's call is not run
    assert segments(qwen3, alpha) == [(again + EOS, True), (tool_glue("2"), False), (again + EOS, True)]
    assert alpha.stop_reason == "max_turns" and alpha.turns[1].metadata["tool_calls_not_run"] == 1
    assert alpha.environment._counter == 2  # the call of the last turn was not run
    assert sorted(seen["rewards"]) == [0.0, 0.0, 1.0, 1.0]  # counters are 2: alpha's target met, beta's not


def test_max_tool_calling_iterations_1_shows_the_code_interpreter_output_too(tokenizer, tmp_path):
    from scripted import SCRIPTS, dataset, reward

    trainer = make_trainer(tokenizer, tmp_path, dataset(), SCRIPTS, reward_funcs=[reward],
                           config=dict(max_tool_calling_iterations=1))
    seen = record(trainer)
    trainer.train()
    alpha = next(t for t in seen["trajectories"] if "alpha:" in tokenizer.decode(t.prompt_ids))
    observation = [text for text, sampled in segments(tokenizer, alpha) if not sampled]
    assert len(alpha.turns) == 2 and observation and "69104" in observation[0]
    assert "So \\boxed{69104}." in tokenizer.decode(alpha.completion_ids)


# ---------------------------------------------------------------------------------------------- picking the kind
class EchoEnv:
    """TRL's echo example: a public method named `step` is a tool, not the code-interpreter contract."""

    def reset(self, **kwargs) -> None:
        self.messages = []

    def step(self, message: str) -> str:
        """
        Echo the message back from the environment.

        Args:
            message: The message to echo

        Returns:
            The echoed message.
        """
        self.messages.append(message)
        return message


class DuckTypedInterpreter:
    """The code-interpreter kind without subclassing ToolEnvironment: step(turn_text) -> ToolResult."""

    def reset(self, **row):
        return None

    def step(self, turn_text):
        if "ping" not in turn_text:
            return ToolResult(observation=None, done=True)
        return ToolResult(observation="pong", done=False, tool_called=True)

    def close(self):
        pass


def test_the_kind_is_picked_by_the_objects_interface(qwen3, tokenizer, tmp_path):
    from sod_trainer.environments.function_tools import FunctionTools, resolve_environment_factory

    factory, tools = resolve_environment_factory(EchoEnv, None, qwen3)
    assert isinstance(tools, FunctionTools) and [t.__name__ for t in tools.environment_tools[None]] == ["step"]
    for interpreter in (DuckTypedInterpreter, lambda: DuckTypedInterpreter()):
        assert resolve_environment_factory(interpreter, None, tokenizer) == (interpreter, None)

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "alpha: echo hi"}]},
                                 {"prompt": [{"role": "user", "content": "beta: echo yo"}]}])
    scripts = {"alpha:": [call("step", message="hi"), "ok"], "beta:": [call("step", message="yo"), "ok"]}
    trainer = make_trainer(qwen3, tmp_path, dataset, scripts, environment_factory=EchoEnv,
                           reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])
    seen = record(trainer)
    trainer.train()
    alpha = next(t for t in seen["trajectories"] if "alpha:" in qwen3.decode(t.prompt_ids))
    assert segments(qwen3, alpha)[1] == (tool_glue("hi"), False)

    # the code-interpreter kind, duck-typed, beside it: its observation goes through the template's tool glue
    trainer = make_trainer(tokenizer, tmp_path, dataset, {"alpha:": ["ping", "done"], "beta:": ["done"]},
                           environment_factory=DuckTypedInterpreter,
                           reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])
    seen = record(trainer)
    trainer.train()
    alpha = next(t for t in seen["trajectories"] if "alpha:" in tokenizer.decode(t.prompt_ids))
    assert [text for text, sampled in segments(tokenizer, alpha) if not sampled] == [
        "\n<|im_start|>user\n<tool_response>\npong\n</tool_response><|im_end|>\n<|im_start|>assistant\n"]


# ---------------------------------------------------------------------------------------------- refused at construction
class NoReset:
    def look(self, x: int) -> int:
        """
        Look.

        Args:
            x: A number.
        """
        return x


class Undocumented:
    def reset(self, **kwargs) -> None:
        pass

    def move(self, direction):
        return direction


class Interpreter(ToolEnvironment):
    def step(self, turn_text: str) -> ToolResult:
        return ToolResult(observation=None, done=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(environment_factory=NoReset), r"NoReset\) has no callable `reset`"),
    (dict(environment_factory=Undocumented), r"Undocumented\): the tool 'Undocumented.move' cannot be described"),
    (dict(tools=[lambda x: x]), r"the tool '<lambda>' cannot be described"),
    (dict(environment_factory=Interpreter, tools=[multiply]), r"Interpreter is a code-interpreter environment"),
    (dict(environment_factory={"a": IncrementEnv, "b": Interpreter}), r"environment_factory\['b'\] \(Interpreter\) is"
                                                                        r" a code-interpreter environment"),
    (dict(environment_factory=42), r"environment_factory must be a class"),
])
def test_environments_that_cannot_work_are_refused_at_construction(qwen3, tmp_path, kwargs, message):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}], "target": 1, "environment": "a"}])
    with pytest.raises((ValueError, TypeError), match=message):
        make_trainer(qwen3, tmp_path, dataset, {}, reward_funcs=[solved_reward],
                     config=dict(per_device_train_batch_size=2), **kwargs)


def test_a_template_that_cannot_render_tool_calls_is_refused_at_construction(tokenizer, tmp_path):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}], "target": 1}])
    with pytest.raises(ValueError, match="cannot render a tool-calling conversation"):
        make_trainer(tokenizer, tmp_path, dataset, {}, environment_factory=IncrementEnv,
                     config=dict(per_device_train_batch_size=2))


def test_the_guides_trl_environment_runs_as_written(qwen3, tmp_path):
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "environments.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", guide, re.DOTALL) if "class CounterEnv" in b)
    namespace: dict = {}
    exec(compile(block, "environments.md", "exec"), namespace)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "alpha: reach 3."}], "target": 3},
                                 {"prompt": [{"role": "user", "content": "beta: reach 4."}], "target": 4}])
    scripts = {"alpha:": [call("increment", a=3), "Done."], "beta:": [call("increment", a=3), "Done."]}
    trainer = make_trainer(qwen3, tmp_path, dataset, scripts, environment_factory=namespace["CounterEnv"])
    seen = record(trainer)
    trainer.train()
    alpha = next(t for t in seen["trajectories"] if "alpha:" in qwen3.decode(t.prompt_ids))
    assert "alpha: reach 3. Use the increment tool.<|im_end|>" in qwen3.decode(alpha.prompt_ids)
    assert segments(qwen3, alpha)[1] == (tool_glue("3"), False)
    assert sorted(seen["rewards"]) == [0.0, 0.0, 1.0, 1.0]


def test_function_tools_with_a_teacher_of_another_tokenizer_are_refused_at_construction(qwen3, tokenizer, tmp_path):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}], "target": 1}])
    with pytest.raises(ValueError, match="teacher whose tokenizer differs from the student's are not supported"):
        make_trainer(qwen3, tmp_path, dataset, {}, environment_factory=IncrementEnv,
                     teacher_processing_class=tokenizer, config=dict(per_device_train_batch_size=2))


class ProceduralEnv:
    """An environment that owns the data: reset returns the whole task (TRL allows no train_dataset then)."""

    def reset(self, **kwargs) -> str:
        self._total = None
        return "alpha: add 2 and 3 with the add tool."

    def add(self, a: int, b: int) -> int:
        """
        Add two integers.

        Args:
            a: The first integer.
            b: The second integer.

        Returns:
            The sum.
        """
        self._total = a + b
        return self._total

    def get_reward(self) -> float:
        return 1.0 if self._total == 5 else 0.0


def test_an_environment_that_owns_the_data_trains_without_a_dataset(qwen3, tmp_path):
    scripts = {"alpha:": [call("add", a=2, b=3), "5"]}
    trainer = make_trainer(qwen3, tmp_path, None, scripts, environment_factory=ProceduralEnv)
    seen = record(trainer)
    trainer.train()
    first = seen["trajectories"][0]
    assert "<|im_start|>user\nalpha: add 2 and 3 with the add tool.<|im_end|>" in qwen3.decode(first.prompt_ids)
    assert segments(qwen3, first)[1] == (tool_glue("5"), False)
    assert len(seen["trajectories"]) == 4 and seen["rewards"] == [1.0] * 4
    with pytest.raises(ValueError, match="needs a train_dataset with an `environment` column"):
        make_trainer(qwen3, tmp_path, None, scripts, environment_factory={"a": ProceduralEnv})
    with pytest.raises(ValueError, match="set max_steps"):
        make_trainer(qwen3, tmp_path, None, scripts, environment_factory=ProceduralEnv, config=dict(max_steps=-1))


def test_code_interpreter_settings_with_function_tools_are_named_in_a_warning(qwen3, tmp_path, caplog):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}], "target": 1}])
    with caplog.at_level("WARNING", logger="sod_trainer.trainer"):
        make_trainer(qwen3, tmp_path, dataset, {}, environment_factory=IncrementEnv,
                     config=dict(per_device_train_batch_size=2, max_tool_response_chars=64))
    assert "max_tool_response_chars=64 only configures the built-in code interpreter" in caplog.text


def test_standalone_evaluation_refuses_a_trl_environment_and_names_the_way_that_works(qwen3):
    from sod_trainer.evaluation import evaluate

    rows = [{"prompt": [{"role": "user", "content": "q"}], "answer": "1", "target": 1}]
    with pytest.raises(ValueError, match=r"TRL-style environment .*SODTrainer\(.*\)\.evaluate\(\)"):
        evaluate(None, qwen3, rows, backend=ScriptedBackend(qwen3, {}), environment_factory=IncrementEnv)


def test_async_tools_and_an_async_get_reward_are_awaited(qwen3):
    from sod_trainer.environments.function_tools import FunctionTools
    from sod_trainer.rollout.adapters import TurnInput

    async def add(a: int, b: int) -> int:
        """
        Adds two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        return a + b

    class JudgedEnv(IncrementEnv):
        async def get_reward(self) -> float:
            return float(self._counter)

    setup = FunctionTools(qwen3, JudgedEnv, tools=[add])
    environment = setup()
    environment.reset(target=3)
    prompt = qwen3.apply_chat_template([{"role": "user", "content": "q"}], tools=environment.tools,
                                       add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = encode(qwen3, call("add", a=1, b=2) + "\n" + call("increment", a=3) + EOS)
    turn = TurnInput(text="", token_ids=ids, context_ids=list(prompt), ended_with_eos=True, final=False)
    result = environment.step(turn)
    assert [m["content"] for m in result.metadata["tool_messages"]] == ["3", "3"] and not result.error
    assert qwen3.decode(environment.observation_ids(result, turn)) == tool_glue("3", "3")
    [reward] = setup.reward_funcs
    assert reward.__name__ == "JudgedEnv" and reward(environments=[environment.environment, None]) == [3.0, None]
