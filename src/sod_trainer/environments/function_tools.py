"""TRL's kind of tool environment, served to the rollout engine unchanged.

A TRL user brings ``environment_factory`` (a class or callable, or a dict of them chosen by the dataset's
``environment`` column) and/or ``tools=[functions]``, exactly as for ``trl.GRPOTrainer``:

* ``reset(**row)`` starts a rollout (it may return text, appended to the last user message);
* every public method (and every function in ``tools``) is a function tool: its JSON schema comes from the type hints
  and Google-style docstring (``transformers.utils.get_json_schema``) and is rendered into the prompt by the chat
  template's ``tools=``;
* the model's calls are parsed from its turn with the tokenizer's response template (``trl.chat_template_utils.
  parse_response``), each call runs, and the results go back as ``tool`` messages rendered by the chat template;
* an optional ``get_reward()`` becomes a reward source named after the class (weight 1).

Instances are pooled as TRL pools them ("construct once, reset often"): one per concurrent rollout, reused by later
batches. Everything that cannot work is refused when the trainer is built, naming the object and the fix.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from ..rollout.adapters import TurnEnvironment, TurnInput
from ..rollout.glue import ToolMessagesGlue
from .base import ToolEnvironment, ToolResult

__all__ = ["FunctionTools", "FunctionToolEnvironment", "is_text_tool_environment", "resolve_environment_factory",
           "uses_function_tools"]

_RESERVED = ("reset", "get_reward")


def is_text_tool_environment(environment: Any) -> bool:
    """The code-interpreter kind: a :class:`ToolEnvironment` (class or instance), or anything whose ``step`` takes
    a single parameter named ``turn_text``. Everything else is TRL's kind (public methods are function tools)."""
    cls = environment if inspect.isclass(environment) else type(environment)
    if issubclass(cls, ToolEnvironment):
        return True
    step = inspect.getattr_static(cls, "step", None)
    if not inspect.isfunction(step):
        return False
    return list(inspect.signature(step).parameters)[1:] == ["turn_text"]


def _declared_class(factory: Any) -> type | None:
    """The class a factory builds, when that is visible without calling it (a class, or a partial of one)."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory if inspect.isclass(factory) else None


def _tool_methods(instance: Any) -> list[Callable]:
    """The environment's function tools, chosen as TRL chooses them: the public functions of its class (listed on the
    class, so properties are not evaluated), bound to the instance, except ``reset`` and ``get_reward``."""
    return [getattr(instance, name) for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
            if name not in _RESERVED and not name.startswith("_")]


def _check_tool(tool: Callable, owner: str) -> None:
    """A tool must yield a JSON schema (type hints + Google docstring), as the chat template's ``tools=`` needs."""
    from transformers.utils import get_json_schema

    name = getattr(tool, "__qualname__", getattr(tool, "__name__", repr(tool)))
    try:
        get_json_schema(tool)
    except Exception as error:
        hint = (" If this class is meant as a code-interpreter environment (step(turn_text) -> ToolResult), subclass "
                "sod_trainer.ToolEnvironment or name step's parameter `turn_text`."
                if getattr(tool, "__name__", "") == "step" else "")
        raise ValueError(
            f"{owner}: the tool {name!r} cannot be described to the model ({type(error).__name__}: {error}). A "
            "function tool needs a type hint on every argument and a Google-style docstring with a one-line "
            "description and an `Args:` section naming each argument (as for trl.GRPOTrainer; see transformers' "
            "get_json_schema). Make it private (a leading underscore) if it is not a tool." + hint) from None


class FunctionTools:
    """The run-wide setup of TRL-style tools: environment factories, their pooled instances, the tool schemas, the
    response parser and the tool-message glue. Calling it gives one :class:`FunctionToolEnvironment` per trajectory
    (a zero-argument factory, as the rollout engine wants)."""

    def __init__(self, tokenizer, environment_factory: Callable | dict[str, Callable] | None = None,
                 tools: list[Callable] | None = None, chat_template_kwargs: dict | None = None,
                 probe: Any = None):
        tools = list(tools or [])
        for tool in tools:
            if not callable(tool):
                raise TypeError(f"tools must be a list of functions (as for trl.GRPOTrainer); got {tool!r}.")
            _check_tool(tool, "tools")
        self.tokenizer = tokenizer
        self.standalone_tools = tools
        self.multi_environment = isinstance(environment_factory, dict)
        if environment_factory is None:
            factories: dict[str | None, Callable] = {}
        elif self.multi_environment:
            factories = dict(environment_factory)
        else:
            factories = {None: environment_factory}
        self.factories = factories
        self.environment_tools: dict[str | None, list[Callable]] = {}
        self._pool: dict[str | None, list[Any]] = {}
        self._lock = threading.Lock()
        self.reward_funcs: list[Callable] = []
        reward_types: list[type] = []
        for name, factory in factories.items():
            where = "environment_factory" if name is None else f"environment_factory[{name!r}]"
            if not callable(factory):
                raise TypeError(f"{where} must be a class or a zero-argument callable returning an environment; got "
                                f"{factory!r}.")
            instance = probe if probe is not None and name is None else factory()
            owner = f"{where} ({type(instance).__name__})"
            if is_text_tool_environment(instance):
                raise ValueError(
                    f"{owner} is a code-interpreter environment (step(turn_text) -> ToolResult), which reads the "
                    "model's turn text itself; it cannot be mixed with TRL-style function tools"
                    + (" or selected from a dict of environments" if self.multi_environment else "") +
                    ". Pass it alone as environment_factory=..., without tools=[...].")
            if not callable(getattr(instance, "reset", None)):
                raise ValueError(f"{owner} has no callable `reset`: a TRL environment defines reset(**row) (it may "
                                 "return text appended to the last user message), as trl.GRPOTrainer requires.")
            methods = _tool_methods(instance)
            for method in methods:
                _check_tool(method, owner)
            self.environment_tools[name] = tools + methods
            self._pool[name] = [instance]
            if callable(getattr(instance, "get_reward", None)) and type(instance) not in reward_types:
                reward_types.append(type(instance))
                self.reward_funcs.append(_environment_reward(type(instance)))
        if not factories:
            self.environment_tools[None] = tools
        self.all_tools = [tool for tools_ in self.environment_tools.values() for tool in tools_]
        self.chat_template = self._prepare_tokenizer(chat_template_kwargs or {})
        self.glue = ToolMessagesGlue(tokenizer, self.chat_template, chat_template_kwargs)
        self.glue([{"role": "tool", "name": "probe", "content": "probe"}], True)  # fails now, not mid-run

    def _prepare_tokenizer(self, chat_template_kwargs: dict) -> str | None:
        """As TRL: the template must render tool calls, a response parser is added for known templates, and a
        prefix-preserving training template replaces one that is not (tool glue is cut from its renderings)."""
        from trl.chat_template_utils import (
            add_response_schema,
            get_training_chat_template,
            is_chat_template_prefix_preserving,
            supports_tool_calling,
        )

        tokenizer = self.tokenizer
        if not supports_tool_calling(tokenizer):
            raise ValueError(
                "The processing_class's chat template cannot render a tool-calling conversation (user -> assistant "
                "with tool_calls -> tool), which TRL environments and tools=[...] need. Use the model family's "
                "instruct template (e.g. trl.chat_template_utils.qwen3_chat_template).")
        has_parser = any(getattr(tokenizer, name, None) is not None for name in ("response_template", "response_schema"))
        if not has_parser:
            try:
                add_response_schema(tokenizer)
            except ValueError as error:
                raise ValueError(
                    "SODTrainer cannot parse tool calls from this chat template: it has no response template and TRL "
                    f"knows none for it ({error}). Set processing_class.response_template (see transformers' "
                    "response parsing docs) or use a template TRL ships (Qwen3, Llama 3.1, GPT-OSS, ...).") from None
        if is_chat_template_prefix_preserving(tokenizer):
            return None
        try:
            return get_training_chat_template(tokenizer)
        except ValueError as error:
            raise ValueError(f"The chat template is not prefix-preserving, so tool results cannot be appended to a "
                             f"sampled turn, and TRL has no training version of it ({error}).") from None

    # ------------------------------------------------------------------ per batch
    def check_rows(self, dataset) -> None:
        """With a dict of environments, every row's ``environment`` must name one of them (checked at start-up)."""
        if not self.multi_environment or dataset is None or not hasattr(dataset, "__len__"):
            return
        if isinstance(dataset, dict):
            for part in dataset.values():
                self.check_rows(part)
            return
        for index in range(len(dataset)):
            name = dataset[index].get("environment")
            if name not in self.factories:
                raise ValueError(
                    f"Dataset row {index} has environment={name!r}, which is not among the environments passed to "
                    f"environment_factory. Expected one of: {list(self.factories)} (a dict of environments selects "
                    "one per row by the `environment` column, as in trl.GRPOTrainer).")

    def acquire(self, name: str | None) -> Any:
        """A free instance of environment ``name`` (a new one only when all are busy)."""
        if name not in self.factories:
            raise ValueError(f"Example has `environment={name!r}`, which is not among the environments passed to "
                             f"`environment_factory`. Expected one of: {list(self.factories)}.")
        with self._lock:
            pool = self._pool[name]
            if pool:
                return pool.pop()
        return self.factories[name]()

    def release(self, name: str | None, instance: Any) -> None:
        """Give an instance back once its trajectory (and its reward) is done."""
        with self._lock:
            self._pool[name].append(instance)

    def __call__(self) -> FunctionToolEnvironment:
        return FunctionToolEnvironment(self)


class FunctionToolEnvironment(TurnEnvironment):
    """One trajectory with TRL-style function tools: parse the turn's calls with the tokenizer's response template,
    run them, and append their results as ``tool`` messages rendered by the chat template."""

    stop_strings: tuple[str, ...] = ()  # a function-calling turn ends with the end-of-turn token

    def __init__(self, tools: FunctionTools):
        self.tools_setup = tools
        self.environment = None
        self.name: str | None = None
        self.tools = list(tools.environment_tools.get(None, tools.standalone_tools))
        self._busy = False

    def reset(self, **row: Any) -> str | None:
        setup = self.tools_setup
        if not setup.factories:
            return None
        self.name = row.get("environment") if setup.multi_environment else None
        self.environment = setup.acquire(self.name)
        self.tools = setup.standalone_tools + _tool_methods(self.environment)
        # `environment` is a control column with a dict of environments: it does not reach reset (as in TRL)
        kwargs = {k: v for k, v in row.items() if k != "environment"} if setup.multi_environment else row
        return self.environment.reset(**kwargs)

    def prompt_options(self) -> dict[str, Any]:
        return {"tools": self.tools or None, "chat_template": self.tools_setup.chat_template,
                "environment_prompt": bool(self.tools_setup.factories)}

    def step(self, turn: TurnInput) -> ToolResult:
        self._busy = True
        result = self._step(turn)
        self._busy = False  # left True when a call raised past us or hung: close() then drops the instance
        return result

    def _step(self, turn: TurnInput) -> ToolResult:
        from trl.chat_template_utils import parse_response

        message = parse_response(self.tools_setup.tokenizer, turn.token_ids, prefix=turn.context_ids,
                                 tools=self.tools)
        calls = message.get("tool_calls") or []
        if not calls:
            return ToolResult(observation=None, done=True, metadata={"message": message})
        if turn.final:  # past the last tool round: TRL does not run these calls
            return ToolResult(observation=None, done=False, metadata={"message": message,
                                                                       "tool_calls_not_run": len(calls)})
        by_name = {tool.__name__: tool for tool in self.tools}
        tool_messages, failures = [], 0
        for call in calls:
            name = call.get("function", {}).get("name", call.get("name", "unknown"))
            try:
                if call.get("type") != "function":
                    raise ValueError(f"Unsupported tool call type: {call.get('type')}")
                if name not in by_name:
                    raise ValueError(f"Tool {name} not found.")
                result = by_name[name](**call["function"]["arguments"])
                if inspect.isawaitable(result):
                    result = _run_coroutine(result)
            except Exception as error:  # as TRL: the model sees the error, the call counts as failed
                failures += 1
                result = {"error": str(error)}
            content = result if isinstance(result, list) else str(result)
            tool_messages.append({"role": "tool", "name": name, "content": content})
        observation = "\n".join(str(m["content"]) for m in tool_messages)
        return ToolResult(observation=observation, done=False, error=failures > 0, tool_called=True,
                          metadata={"message": message, "tool_messages": tool_messages, "tool_calls": len(calls),
                                    "tool_failures": failures})

    def observation_ids(self, result: ToolResult, turn: TurnInput) -> list[int]:
        return self.tools_setup.glue(result.metadata["tool_messages"], turn.ended_with_eos)

    def close(self) -> None:
        """Not the user's ``close`` (TRL never calls one; a public ``close`` is a tool): the instance goes back to
        the pool, to be reset for a later rollout."""
        if self.environment is not None and not self._busy:  # a hung call may still use it: never reuse that
            self.tools_setup.release(self.name, self.environment)
        self.environment = None


def _run_coroutine(coroutine) -> Any:
    """Await an async tool or reward on this (worker) thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", asyncio.run(coroutine)))
    thread.start()
    thread.join()
    return result["value"]


def _environment_reward(environment_type: type) -> Callable:
    """TRL's reward source for an environment with ``get_reward()``: one value per rollout of exactly this class
    (``None`` for the others), named after the class, weight 1."""

    def get_reward(environments, **kwargs):
        values = []
        for environment in environments:
            if type(environment) is not environment_type:
                values.append(None)
                continue
            value = environment.get_reward()
            values.append(_run_coroutine(value) if inspect.isawaitable(value) else value)
        return values

    get_reward.__name__ = get_reward.__qualname__ = environment_type.__name__
    return get_reward


def uses_function_tools(environment_factory: Any) -> bool:
    """Whether ``environment_factory`` is TRL's kind (a dict, or a factory of objects that are not code interpreters);
    a plain callable is called once to look at what it builds."""
    if environment_factory is None:
        return False
    if isinstance(environment_factory, dict):
        return True
    declared = _declared_class(environment_factory)
    if declared is not None:
        return not is_text_tool_environment(declared)
    probe = environment_factory()
    if is_text_tool_environment(probe):
        close = getattr(probe, "close", None)
        if close is not None:
            close()
        return False
    return True


def resolve_environment_factory(environment_factory, tools, tokenizer, chat_template_kwargs=None):
    """Pick the kind by the object's interface. Returns ``(factory for the engine or None, FunctionTools or None)``:
    a code-interpreter factory is returned as it is; TRL's environments and ``tools`` get a :class:`FunctionTools`.
    ``(None, None)`` when neither is given (the trainer then builds the default Python tool)."""
    if environment_factory is None and not tools:
        return None, None
    probe = None
    if environment_factory is not None and not isinstance(environment_factory, dict):
        if not callable(environment_factory):
            raise TypeError(f"environment_factory must be a class, a zero-argument callable or a dict of them (as "
                            f"for trl.GRPOTrainer); got {environment_factory!r}.")
        declared = _declared_class(environment_factory)
        if declared is not None and is_text_tool_environment(declared):
            if tools:
                raise ValueError(
                    f"environment_factory {declared.__name__} is a code-interpreter environment (step(turn_text)), "
                    "which reads the model's turn text itself; tools=[...] are function tools called through the "
                    "chat template and cannot be combined with it. Pass one or the other.")
            return environment_factory, None
        if declared is None:  # a plain callable: look at what it builds (TRL builds one instance up front too)
            probe = environment_factory()
            if is_text_tool_environment(probe):
                close = getattr(probe, "close", None)
                if close is not None:
                    close()
                if tools:
                    raise ValueError(
                        f"environment_factory builds {type(probe).__name__}, a code-interpreter environment "
                        "(step(turn_text)); tools=[...] are function tools and cannot be combined with it.")
                return environment_factory, None
    setup = FunctionTools(tokenizer, environment_factory, tools, chat_template_kwargs, probe=probe)
    return setup, setup
