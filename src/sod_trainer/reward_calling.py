"""Reward sources called exactly as TRL 1.16's ``GRPOTrainer`` calls them (its ``_calculate_rewards``).

Each source gets ``prompts``, ``completions``, ``completion_ids``, every dataset column (as lists),
``trainer_state``, ``log_extra``, ``log_metric`` and ``environments`` (the per-completion environment objects),
plus SOD's ``trajectories``. Conversational datasets give message lists, plain-text ones strings (see
:func:`trl_prompts_and_completions`). A source is a callable (sync or ``async``), a ``PreTrainedModel``
(a sequence-classification reward model, scored on the chat-templated ``prompt + completion`` with its
``reward_processing_class``) or a model id / path (loaded as TRL loads it). ``None`` becomes NaN; a row whose
sources are all ``None`` gets no reward and no advantage. Names come from TRL's ``get_callable_name``.

A source that raises fails the run with its own traceback (``reward_failure_policy="raise"``, TRL's behaviour);
``"contain"`` logs it, leaves that source's column empty (NaN) for the batch, counts it in
``rewards/<name>/failures`` and stops the run after ``max_consecutive_reward_failures`` failing batches in a row.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["RewardCaller", "RewardFailure", "check_reward_signature", "completion_messages",
           "trl_prompts_and_completions"]

# keyword arguments the trainer adds; not dataset columns (TRL leaves them out of its "all None" warning too)
TRAINER_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "trajectories")


class RewardFailure(RuntimeError):
    """Raised when reward sources kept failing for ``max_consecutive_reward_failures`` batches in a row."""


def is_conversational_row(row: dict[str, Any]) -> bool:
    """TRL's ``is_conversational`` for one dataset row (a ``messages`` column counts as conversational)."""
    from trl.data_utils import is_conversational

    if row.get("prompt") is not None:
        return is_conversational({"prompt": row["prompt"]})
    if row.get("messages") is not None:
        return is_conversational({"messages": row["messages"]})
    # a 'problem' / 'question' string is plain text; no prompt at all (an environment owns the data) gets TRL's
    # placeholder, an empty user message
    return not any(isinstance(row.get(column), str) for column in ("problem", "question"))


def completion_messages(trajectory, tokenizer) -> list[dict[str, Any]]:
    """A trajectory as TRL's conversational completion: one assistant message per model turn, each followed by the
    tool messages the model was shown after it (``turn.metadata['assistant_message']`` / ``['tool_messages']``
    when the environment recorded them, else the turn's text and observation)."""
    messages: list[dict[str, Any]] = []
    turns = trajectory.turns
    for index, turn in enumerate(turns):
        metadata = turn.metadata or {}
        assistant = metadata.get("assistant_message") or metadata.get("message")  # parsed by the chat template
        messages.append(dict(assistant) if assistant else {"role": "assistant", "content": turn.text})
        next_start = turns[index + 1].start if index + 1 < len(turns) else trajectory.completion_length
        shown = next_start > turn.end and not any(trajectory.assistant_mask[turn.end:next_start])
        if shown and turn.observation is not None:
            tool_messages = metadata.get("tool_messages")
            if tool_messages:
                messages.extend(dict(message) for message in tool_messages)
            else:
                messages.append({"role": "tool", "name": metadata.get("tool_name", "python"),
                                 "content": turn.observation})
    if not messages:  # nothing was generated (empty budget): TRL decodes an empty completion
        messages.append({"role": "assistant", "content": ""})
    return messages


def trl_prompts_and_completions(rows, prompt_messages, trajectories, tokenizer) -> tuple[list, list]:
    """``prompts`` and ``completions`` as TRL passes them: message lists for a conversational dataset
    (the prompt with the environment's ``reset`` text appended), strings for a plain-text one."""
    if rows and is_conversational_row(rows[0]):
        return ([list(messages) for messages in prompt_messages],
                [completion_messages(trajectory, tokenizer) for trajectory in trajectories])
    prompts = [messages[-1]["content"] for messages in prompt_messages]
    completions = [tokenizer.decode(t.completion_ids, skip_special_tokens=True) for t in trajectories]
    return prompts, completions


TRL_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
              "environments", "trajectories")


def check_reward_signature(function: Callable, name: str, columns: Sequence[str] | None) -> None:
    """Refuse at construction a reward function that cannot take the keyword arguments it will get: a required
    argument that is neither TRL's nor a dataset column, or no ``**kwargs`` to take the others (TRL would fail at
    its first call). ``columns``: the dataset's columns, ``None`` when unknown (then only ``**kwargs`` is checked)."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to inspect
        return
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        raise TypeError(
            f"The reward function {name!r} takes no **kwargs, but it is called as TRL calls it, with prompts, "
            "completions, completion_ids, trainer_state, log_extra, log_metric, environments and every dataset "
            f"column as keyword arguments. Add **kwargs to its signature, e.g. def {name}(completions, **kwargs).")
    if columns is None:
        return
    available = set(TRL_KWARGS) | (set(columns) - {"prompt", "completion", "completion_ids"})
    for parameter in parameters:
        required = parameter.default is parameter.empty and parameter.kind in (
            parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        if required and parameter.name not in available:
            raise ValueError(
                f"The reward function {name!r} needs the argument {parameter.name!r}, which is neither one the "
                f"trainer passes ({', '.join(TRL_KWARGS)}) nor a dataset column (it has {sorted(columns)}). Add "
                f"a {parameter.name!r} column to the dataset, or give the argument a default.")


def _load_reward_model(name: str, args) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    kwargs = dict(args.model_init_kwargs or {}) if isinstance(args.model_init_kwargs, dict) else {}
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None  # as TRL: "auto" fails in distributed training
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    try:
        return AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
    except OSError as error:
        raise OSError(f"Could not load the reward model {name!r} (reward_funcs): {error}. Pass a local path, or "
                      "make sure the Hugging Face Hub is reachable.") from error


class RewardCaller:
    """The trainer's reward sources, their names and weights; :meth:`__call__` gives the ``(B, F)`` rewards."""

    def __init__(self, reward_funcs: Sequence[Any], args, accelerator, reward_processing_classes=None,
                 is_deepspeed_enabled: bool = False):
        from transformers import AutoTokenizer, PreTrainedModel
        from trl.trainer.utils import get_callable_name, get_config_model_id

        self.args = args
        self.accelerator = accelerator
        funcs, names = [], []
        for index, function in enumerate(reward_funcs):
            if isinstance(function, str):
                function = _load_reward_model(function, args)
            if isinstance(function, nn.Module):
                if not hasattr(function, "config"):
                    raise TypeError(f"reward_funcs[{index}] is a torch module without a `config` "
                                    f"({type(function).__name__}); a reward model must be a transformers "
                                    "sequence-classification model (AutoModelForSequenceClassification, num_labels=1).")
                names.append(get_config_model_id(function.config).split("/")[-1])
            elif callable(function):
                names.append(get_callable_name(function))
            else:
                raise TypeError(
                    f"reward_funcs[{index}] is {function!r:.80} (type {type(function).__name__}); each reward must be "
                    "a callable fn(prompts, completions, **kwargs) -> list[float | None] (sync or async), a "
                    "PreTrainedModel for sequence classification, or a model id / path of one.")
            funcs.append(function)
        if reward_processing_classes is None:
            reward_processing_classes = [None] * len(funcs)
        elif not isinstance(reward_processing_classes, (list, tuple)):
            reward_processing_classes = [reward_processing_classes]
        reward_processing_classes = list(reward_processing_classes)
        if len(reward_processing_classes) != len(funcs):
            raise ValueError(f"The number of reward processing classes ({len(reward_processing_classes)}) must match "
                             f"the number of reward functions ({len(funcs)}); pass one per reward function, None "
                             "where it has none.")
        for index, (processing_class, function) in enumerate(zip(reward_processing_classes, funcs)):
            if isinstance(function, PreTrainedModel):
                if processing_class is None:
                    revision = (args.model_init_kwargs or {}).get("revision") \
                        if isinstance(args.model_init_kwargs, dict) else None
                    processing_class = AutoTokenizer.from_pretrained(
                        get_config_model_id(function.config), revision=revision,
                        trust_remote_code=args.trust_remote_code)
                if processing_class.pad_token_id is None:
                    processing_class.pad_token = processing_class.eos_token
                # the model scores the last non-padded token: its pad id must be the processing class's
                function.config.get_text_config().pad_token_id = processing_class.pad_token_id
                reward_processing_classes[index] = processing_class
                function.eval()
                if is_deepspeed_enabled:
                    from trl.models.utils import prepare_deepspeed

                    funcs[index] = prepare_deepspeed(function, accelerator)
                else:
                    funcs[index] = accelerator.prepare_model(function, evaluation_mode=True, device_placement=True)
        self.funcs = funcs
        self.names = names
        self.processing_classes = reward_processing_classes
        weights = args.reward_weights if args.reward_weights is not None else [1.0] * len(funcs)
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.pending_extra: dict[str, list] = defaultdict(list)
        self.pending_metrics: dict[str, list[float]] = defaultdict(list)
        self.consecutive_failing_batches = 0
        self._loop = self._loop_thread = None

    def add_source(self, function: Callable, name: str, weight: float = 1.0) -> None:
        """Append a reward source (e.g. an environment's ``get_reward``), as TRL does: weight 1, no processing class."""
        self.funcs.append(function)
        self.names.append(name)
        self.processing_classes.append(None)
        self.weights = torch.cat([self.weights, torch.tensor([weight], dtype=torch.float32)])

    def __len__(self) -> int:
        return len(self.funcs)

    # ------------------------------------------------------------------ TRL's log_extra / log_metric
    def log_extra(self, column: str, values: list) -> None:
        """Add a column to the completions table (TRL's ``log_extra``)."""
        self.pending_extra[column].extend(values)

    def log_metric(self, name: str, value: float) -> None:
        """Log a scalar, averaged over the logging step (TRL's ``log_metric``)."""
        self.pending_metrics[name].append(value)

    # ------------------------------------------------------------------ calling
    def _event_loop(self):
        if self._loop is None:
            from trl.trainer.utils import shutdown_event_loop_in_daemon, start_event_loop_in_daemon

            self._loop_thread, self._loop, ready = start_event_loop_in_daemon(name="SODTrainer-RewardLoop")
            ready.wait()
            atexit.register(shutdown_event_loop_in_daemon, self._loop_thread, self._loop)
        return self._loop

    def _model_rewards(self, function, processing_class, prompts, completions) -> torch.Tensor:
        from trl.data_utils import apply_chat_template, is_conversational

        if is_conversational({"prompt": prompts[0]}):
            texts = [apply_chat_template({"messages": p + c}, processing_class,
                                         **(self.args.chat_template_kwargs or {}))["text"]
                     for p, c in zip(prompts, completions)]
        else:
            texts = [p + c for p, c in zip(prompts, completions)]
        inputs = processing_class(text=texts, return_tensors="pt", padding=True, padding_side="right",
                                  add_special_tokens=False)
        device = next(function.parameters()).device
        inputs = {key: value.to(device) for key, value in inputs.items()}
        with torch.inference_mode():
            return function(**inputs).logits[:, 0].float().cpu()

    @staticmethod
    def _column(name: str, output, count: int) -> torch.Tensor:
        output = [value if value is not None else torch.nan for value in output]
        if len(output) != count:
            raise ValueError(f"The reward function '{name}' returned {len(output)} rewards, but {count} were "
                             "expected (one per prompt-completion pair). Make sure the reward function returns "
                             "exactly one reward per completion.")
        return torch.tensor(output, dtype=torch.float32)

    def __call__(self, rows: Sequence[dict[str, Any]], prompts: list, completions: list,
                 completion_ids: list[list[int]], *, trainer_state=None, environments=None,
                 trajectories=None) -> tuple[torch.Tensor, dict[str, float]]:
        """``(B, F)`` rewards (NaN where a source returned ``None``) and the failure counts of this batch."""
        from trl.trainer.utils import is_async_callable

        count = len(prompts)
        per_function = torch.full((count, len(self.funcs)), torch.nan)
        keys = [key for key in rows[0] if key not in ("prompt", "completion", "completion_ids")] if rows else []
        kwargs: dict[str, Any] = {key: [row.get(key) for row in rows] for key in keys}
        kwargs.update(trainer_state=trainer_state, log_extra=self.log_extra, log_metric=self.log_metric)
        if environments is not None:
            kwargs["environments"] = list(environments)
        if trajectories is not None:
            kwargs["trajectories"] = trajectories
        contain = self.args.reward_failure_policy == "contain"
        failures: dict[str, float] = {}
        pending = []

        def fail(name: str, error: BaseException) -> None:
            if not contain:
                if hasattr(error, "add_note"):  # Python >= 3.11
                    error.add_note(f"(raised by the reward function {name!r}; reward_failure_policy='contain' "
                                   "would count such failures and train on)")
                raise error
            logger.warning("Reward function %r failed on this batch (%s: %s); its reward is left out (None) for "
                           "this batch and counted in rewards/%s/failures. Fix the function or the dataset column "
                           "it reads.", name, type(error).__name__, error, name)
            failures[name] = 1.0

        for index, (function, processing_class, name) in enumerate(
                zip(self.funcs, self.processing_classes, self.names)):
            failures.setdefault(name, 0.0)
            try:
                if isinstance(function, nn.Module):
                    per_function[:, index] = self._model_rewards(function, processing_class, prompts, completions)
                elif is_async_callable(function):
                    pending.append((index, function, name))
                else:
                    output = function(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                      **kwargs)
                    per_function[:, index] = self._column(name, output, count)
            except Exception as error:  # noqa: BLE001 - re-raised unless the policy contains it
                fail(name, error)
        if pending:
            async def invoke(index, function, name):
                try:
                    output = await function(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                            **kwargs)
                    return index, name, self._column(name, output, count), None
                except Exception as error:  # noqa: BLE001 - handled below, in the caller's thread
                    return index, name, None, error

            async def run_all():
                return await asyncio.gather(*(invoke(*item) for item in pending))

            for index, name, column, error in asyncio.run_coroutine_threadsafe(run_all(), self._event_loop()).result():
                if error is not None:
                    fail(name, error)
                else:
                    per_function[:, index] = column

        unscorable = torch.isnan(per_function).all(dim=1)
        if unscorable.any() and not any(failures.values()):
            row = int(unscorable.nonzero()[0][0])
            shown = {key: value[row] for key, value in kwargs.items() if key not in TRAINER_KWARGS}
            shown.update(prompt=prompts[row], completion=completions[row])
            logger.warning("All reward functions returned None for the following kwargs:\n%s\nPlease ensure that at "
                           "least one reward function returns a valid reward.", shown)
        metrics = {}
        if contain:
            metrics = {f"rewards/{name}/failures": value for name, value in failures.items()}
            if any(failures.values()):
                self.consecutive_failing_batches += 1
                limit = self.args.max_consecutive_reward_failures
                if limit is not None and self.consecutive_failing_batches >= limit:
                    failed = sorted(name for name, value in failures.items() if value)
                    raise RewardFailure(
                        f"Reward functions {failed} failed on {self.consecutive_failing_batches} rollout batches in a "
                        f"row (max_consecutive_reward_failures={limit}); stopping. See the warnings above for their "
                        "errors, fix them, or raise max_consecutive_reward_failures.")
            else:
                self.consecutive_failing_batches = 0
        return per_function, metrics

    def flush(self, count: int, gather_object: Callable[[list], list], gather_mean: Callable[[list[float]], float]
              ) -> tuple[dict[str, list], dict[str, float]]:
        """The extra table columns and metrics reward functions logged for this batch (gathered as TRL does)."""
        extra = {}
        for column in sorted(set(gather_object(list(self.pending_extra)))):
            values = self.pending_extra.get(column, [None] * count)
            extra[column] = gather_object(list(values))
        self.pending_extra.clear()
        metrics = {}
        for name in sorted(set(gather_object(list(self.pending_metrics)))):
            metrics[name] = gather_mean(self.pending_metrics.get(name, []))
        self.pending_metrics.clear()
        return extra, metrics
