"""SODTrainer: orchestration of one SOD step (rollout → score → weight → loss → log).

The method lives in :mod:`sod_trainer.objective`; rollouts in :mod:`sod_trainer.rollout`; this file
wires them into ``transformers.Trainer`` the way TRL's ``GRPOTrainer`` does (a rollout batch is
generated every ``steps_per_generation * num_iterations`` micro-steps and consumed in slices).
"""

from __future__ import annotations

import logging
import types
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, Trainer
from transformers.utils import is_peft_available

from .config import SODConfig, retry_policy
from .environments import PythonSandbox, PythonToolEnvironment, SandboxConfig, ToolEnvironment
from .environments.function_tools import resolve_environment_factory
from .interrupt import InterruptCallback, InterruptHandler
from .logprobs import sampled_token_logprobs
from .rollout import HFGenerationBackend, RolloutEngine, ToolResponseFormatter
from .on_policy import OnPolicyWeighting, is_on_policy
from .reward_calling import RewardCaller
from .scoring import RolloutScorer, ScoredBatch
from .segmenters import StepSegmenter, get_segmenter
from .teacher import LocalTeacher, resolve_teacher_tokenizer
from .trainer_checkpointing import CheckpointingMixin
from .trainer_logging import LoggingMixin
from .trainer_setup import load_model, placeholder_dataset, prompt_options, warn_interpreter_fields
from .validation import (check_chat_template, validate_prompts, validate_reward_columns,
                         validate_reward_signatures)

logger = logging.getLogger(__name__)

__all__ = ["SODTrainer"]


def _identity(rows):
    return rows


class SODTrainer(CheckpointingMixin, LoggingMixin, Trainer):
    """Step-wise on-policy distillation of ``teacher_model`` into ``model`` on multi-turn tool rollouts.

    Args:
        model: the student, a ``PreTrainedModel`` or a name/path (loaded with ``args.model_init_kwargs``).
        teacher_model: the teacher, an instance or a name/path; default ``args.teacher_model_name_or_path``.
        args: :class:`SODConfig`.
        train_dataset: rows with a prompt column (``prompt``, ``messages`` or ``problem``) and any extra
            columns, which reach the reward functions (as kwargs) and ``ToolEnvironment.reset``.
        eval_dataset: rows like ``train_dataset``; ``evaluate()`` rolls them out and logs ``eval_*`` metrics.
        processing_class: the tokenizer (default: the student's); must have a chat template.
        reward_funcs: as TRL's ``GRPOTrainer``: callables ``fn(prompts, completions, **kwargs) -> list[float |
            None]`` (sync or ``async``), ``PreTrainedModel`` sequence-classification reward models, or model ids /
            paths of them; called with TRL's keyword arguments (see :mod:`sod_trainer.reward_calling`) and summed
            with ``args.reward_weights``. Needed unless ``grpo_coef == 0``.
        reward_processing_classes: tokenizers of the reward models, one per entry of ``reward_funcs`` (``None``
            for a function, or to load the model's own), as TRL's.
        environment_factory: the kind is picked by the object's interface (see ``docs/environments.md``):
            a zero-argument callable returning a code-interpreter :class:`ToolEnvironment` (``step(turn_text)``),
            or TRL's kind, a class/callable (or a dict of them, chosen by the dataset's ``environment`` column) whose
            instances have ``reset(**row)``, public methods that are function tools and maybe ``get_reward()``;
            default a :class:`PythonToolEnvironment` built from ``args``.
        tools: functions the model may call, as ``trl.GRPOTrainer``'s ``tools`` (type hints + Google docstrings).
        step_segmenter: a :class:`StepSegmenter`; default from ``args.step_segmenter``.
        peft_config: a ``peft.PeftConfig`` to train adapters instead of the full student.
        teacher_processing_class: the teacher's tokenizer, when it is not the student's (default
            ``args.teacher_tokenizer_name_or_path``, else the one saved with the teacher). A tokenizer that
            differs from the student's selects the cross-tokenizer path (``teacher_cross.py``), logged.
    """

    _tag_names = ["trl", "sod"]
    recipe_file: str | None = None  # the YAML recipe of the run (set by `sod train`): copied next to the model card
    loss_is_scaled_for_ga = True  # compute_loss normalizes by the global token count itself

    def __init__(
        self,
        model: PreTrainedModel | str,
        teacher_model: PreTrainedModel | torch.nn.Module | str | None = None,
        args: SODConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_funcs: Callable | PreTrainedModel | str | list[Callable | PreTrainedModel | str] | None = None,
        environment_factory: Callable[[], ToolEnvironment] | None = None,
        step_segmenter: StepSegmenter | None = None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        teacher_processing_class=None,
        tools: list[Callable] | None = None,
        reward_processing_classes=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SODConfig(f"{str(name).split('/')[-1]}-SOD")
        if not isinstance(args, SODConfig):
            raise TypeError(f"args must be an SODConfig, got {type(args).__name__}.")
        if teacher_model is not None and not isinstance(teacher_model, (str, torch.nn.Module)):
            raise TypeError(
                f"teacher_model must be a model or a model name/path, got {teacher_model!r}. SODTrainer's second "
                "positional argument is teacher_model (GRPOTrainer's is reward_funcs): pass reward_funcs=... by keyword."
            )
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if "toy-student" in (model, teacher_model) or "toy-teacher" in (model, teacher_model):
            from .toy.models import resolve_toy_names  # the offline toy world's names, as in recipes

            model, teacher_model, processing_class = resolve_toy_names(model, teacher_model, processing_class,
                                                                       seed=args.seed)
        if isinstance(model, str):
            model = load_model(model, args.model_init_kwargs, args, "student")
        if teacher_model is None and args.teacher_server_url is None and args.opd_coef != 0:
            raise ValueError("No teacher: pass teacher_model=..., or set teacher_model_name_or_path or "
                             "teacher_server_url in SODConfig (only opd_coef=0, plain GRPO, needs none).")
        if isinstance(teacher_model, str):
            teacher_model = load_model(teacher_model, args.teacher_model_init_kwargs, args, "teacher")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        check_chat_template(processing_class, args.chat_template_kwargs)
        if teacher_processing_class is None and args.teacher_tokenizer_name_or_path is not None:
            teacher_processing_class = AutoTokenizer.from_pretrained(args.teacher_tokenizer_name_or_path,
                                                                     trust_remote_code=args.trust_remote_code)
        teacher_tokenizer = resolve_teacher_tokenizer(model, teacher_model, processing_class,
                                                      teacher_processing_class)
        if teacher_tokenizer is not None:
            check_chat_template(teacher_tokenizer, args.chat_template_kwargs)
        if peft_config is not None:
            if not is_peft_available():
                raise ImportError("peft_config needs the `peft` package: pip install peft")
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing:  # as TRL: checkpointed LoRA layers need inputs that require grads
                model.enable_input_require_grads()
        if args.disable_dropout:
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(model)
            if teacher_model is not None:
                disable_dropout_in_model(teacher_model)

        if reward_funcs is None:
            reward_funcs = []
        elif not isinstance(reward_funcs, (list, tuple)):
            reward_funcs = [reward_funcs]
        reward_funcs = list(reward_funcs)
        if args.reward_weights is not None and len(args.reward_weights) != len(reward_funcs):
            raise ValueError(f"reward_weights has {len(args.reward_weights)} entries but there are "
                             f"{len(reward_funcs)} reward functions; give one weight per reward function, in "
                             "the order of reward_funcs.")
        # TRL-style environments / tools go behind one adapter; get_reward() methods become reward sources (weight 1)
        environment_factory, function_tools = resolve_environment_factory(
            environment_factory, tools, processing_class, args.chat_template_kwargs)
        if function_tools is not None and teacher_tokenizer is not None:
            raise ValueError(
                "TRL-style environments / tools=[...] with a teacher whose tokenizer differs from the student's are "
                "not supported yet: the cross-tokenizer teacher re-renders each turn's observation as one tool "
                "response without the function schemas, so it would score a different context. Use a teacher with "
                "the student's tokenizer, or the code-interpreter environment.")
        if function_tools is not None:
            warn_interpreter_fields(args)
        environment_rewards = list(function_tools.reward_funcs) if function_tools is not None else []
        if not reward_funcs + environment_rewards and args.grpo_coef != 0:
            raise ValueError(
                "grpo_coef is non-zero but no reward_funcs were given. Pass reward_funcs=[...] (e.g. "
                "[sod_trainer.rewards.make_math_reward()]), an environment_factory whose environment defines "
                "get_reward(), or set grpo_coef=0 for pure step-weighted distillation."
            )

        environment_prompt = function_tools is not None and bool(function_tools.factories)
        if train_dataset is None and environment_prompt:
            train_dataset = placeholder_dataset(function_tools, args)
        if args.validate_dataset:
            for dataset in (train_dataset, eval_dataset):
                if function_tools is not None:
                    function_tools.check_rows(dataset)
                validate_prompts(dataset, processing_class, args,
                                 prompt_options(function_tools) if function_tools is not None else None,
                                 environment_prompt=environment_prompt)
                validate_reward_columns(dataset, reward_funcs)
        # a reward that cannot take TRL's keyword arguments, or needs a column the data lacks, fails here, not at
        # its first call (the columns are checked unless an environment owns the data)
        validate_reward_signatures(None if environment_prompt or not args.validate_dataset else train_dataset,
                                   reward_funcs)
        self.interrupt_handler = InterruptHandler()
        super().__init__(
            model=model, args=args, data_collator=_identity, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class,
            callbacks=list(callbacks or []) + [InterruptCallback(self.interrupt_handler)], optimizers=optimizers,
        )
        self.num_generations = args.num_generations
        self._skip_update = False
        self._step = 0
        self._buffered_inputs: list[dict[str, Any]] | None = None
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._last_samples: list[dict[str, Any]] = []
        self._last_view = None  # the last scored batch for the trajectory page (sod_trainer.viewer)
        # π_old from the loss's own forward pass when each rollout batch feeds one optimizer step (on_policy.py)
        self._on_policy = is_on_policy(args)
        self._on_policy_weighting = OnPolicyWeighting(args)

        if teacher_model is not None:
            teacher_model.eval()
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                teacher_model = prepare_deepspeed(teacher_model, self.accelerator)
            else:
                teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
            self.teacher_model = teacher_model
            teacher = LocalTeacher(teacher_model, temperature=args.temperature, chunk_size=args.logprob_chunk_size)
        elif args.teacher_server_url is not None:
            from .teacher_server import ServerTeacher  # vLLM prompt log-probs over HTTP

            self.teacher_model = None
            teacher = ServerTeacher(args.teacher_server_url, teacher_tokenizer or processing_class,
                                    temperature=args.temperature, timeout=args.teacher_server_timeout,
                                    retry=retry_policy(args))
        else:  # plain GRPO (opd_coef=0): no teacher to load or score with
            self.teacher_model = None
            teacher = None

        segmenter = step_segmenter or get_segmenter(args.step_segmenter, processing_class, args.segment_step_tokens)
        if environment_factory is None:
            sandbox = PythonSandbox(SandboxConfig(
                timeout_s=args.tool_timeout, memory_mb=args.tool_memory_mb, max_processes=args.tool_max_processes,
                isolation=args.tool_isolation,
            ))
            environment_factory = partial(
                PythonToolEnvironment, parser=args.tool_call_format, sandbox=sandbox,
                max_tool_response_chars=args.max_tool_response_chars, persistent=args.tool_persistent,
            )
        self.rollout_engine = RolloutEngine(
            self._make_backend(), processing_class, environment_factory,
            # TRL counts tool rounds: after the last one the model generates once more
            max_completion_length=args.max_completion_length, max_turns=args.max_tool_calling_iterations + 1,
            tool_workers=args.tool_workers,
            formatter=ToolResponseFormatter(processing_class, args.tool_response_template,
                                            args.chat_template_kwargs),
            should_stop=self.interrupt_handler.check,
            any_process_live=self._any_process_live if self._generation_is_collective() else None,
        )
        if teacher is not None and teacher_tokenizer is not None:
            from .teacher_cross import CrossTokenizerTeacher

            teacher = CrossTokenizerTeacher(teacher, processing_class, teacher_tokenizer,
                                            chat_template_kwargs=args.chat_template_kwargs,
                                            eos_token_ids=[i for i in self.rollout_engine.eos_token_ids if i is not None])
        self.teacher_processing_class = teacher_tokenizer
        self.rewards = RewardCaller(list(reward_funcs), args, self.accelerator, reward_processing_classes,
                                    is_deepspeed_enabled=self.is_deepspeed_enabled)
        for function in environment_rewards:  # get_reward(): named after the class, weight 1 (as TRL)
            self.rewards.add_source(function, function.__name__)
        self.reward_funcs = self.rewards.funcs  # TRL's attribute names
        self.reward_func_names = self.rewards.names
        self.reward_processing_classes = self.rewards.processing_classes
        self.scorer = RolloutScorer(
            args=args, tokenizer=processing_class, teacher=teacher, segmenter=segmenter,
            rewards=self.rewards, accelerator=self.accelerator,
        )

    # ------------------------------------------------------------------ generation backend
    def _generation_is_collective(self) -> bool:
        """HF generation under ZeRO-3 gathers the sharded student on every call: processes must stay in lockstep."""
        plugin = self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None
        return plugin is not None and plugin.zero_stage == 3 and not self.args.use_vllm

    def _any_process_live(self, local: bool) -> bool:
        flag = torch.tensor([1.0 if local else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _make_backend(self):
        args = self.args
        if args.use_vllm:
            from .rollout.vllm import make_vllm_backend

            return make_vllm_backend(self)
        from trl.models.utils import unwrap_model_for_generation

        generation_config = getattr(self.accelerator.unwrap_model(self.model), "generation_config", None)
        extra_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
        extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos or [])
        return HFGenerationBackend(
            lambda: unwrap_model_for_generation(
                self.model_wrapped, self.accelerator,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs),
            self.processing_class, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            min_p=args.min_p, repetition_penalty=args.repetition_penalty, generation_kwargs=args.generation_kwargs,
            eos_token_ids=extra_eos, gather_when_empty=self._generation_is_collective(),
        )

    # ------------------------------------------------------------------ data
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt"]

    def _get_train_sampler(self, dataset=None):
        from trl.trainer.utils import RepeatSampler

        dataset = dataset if dataset is not None else self.train_dataset
        return RepeatSampler(
            data_source=dataset, mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.args.num_iterations * self.args.steps_per_generation,
            shuffle=self.args.shuffle_dataset, seed=self.args.seed,
        )

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("SODTrainer needs a train_dataset.")
        return self._get_dataloader(
            dataset=self.train_dataset, description="Training",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=self._get_train_sampler, is_training=True,
        )

    def _get_eval_sampler(self, eval_dataset):
        from trl.trainer.utils import RepeatSampler

        return RepeatSampler(data_source=eval_dataset, mini_repeat_count=self.num_generations, shuffle=False)

    # ------------------------------------------------------------------ rollout batches
    def _prepare_inputs(self, generation_batch: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        if mode == "eval":
            self._on_policy_weighting.start_batch(1)
            return self._generate_and_score(generation_batch, mode).slices(1)[0]
        generate_every = self.args.steps_per_generation * self.args.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score(generation_batch, mode)
            self._buffered_inputs = batch.slices(self.args.steps_per_generation, self.args.gradient_accumulation_steps)
            self._on_policy_weighting.start_batch(len(self._buffered_inputs) - self._step % generate_every)
        inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        self._step += 1
        return inputs

    def _generate_and_score(self, rows: list[dict[str, Any]], mode: str) -> ScoredBatch:
        was_training = self.model.training
        with torch.no_grad():
            batch = self.scorer.build(rows, self.rollout_engine, student_logprobs=self._student_logprobs,
                                      on_policy=self._on_policy, trainer_state=self.state)
        self.model.train(was_training)
        if mode == "train":  # TRL's num_tokens: prompt + model tokens seen so far, all processes
            self.state.num_input_tokens_seen += batch.num_tokens
        self._metrics[mode]["num_tokens"] = [self.state.num_input_tokens_seen]
        for key, value in batch.metrics.items():
            self._metrics[mode][key].append(value)
        for key, counter in self._retry_counters().items():  # retries during this batch's rollout and scoring
            self._metrics[mode][key].append(float(counter.pop()))
        self._last_samples = batch.samples
        self._last_view = batch.view
        return batch

    def _retry_counters(self) -> dict[str, Any]:
        counters = {}
        teacher_retries = getattr(self.scorer.teacher, "retries", None)
        if teacher_retries is not None:
            counters["server/teacher_retries"] = teacher_retries
        generation_retries = getattr(self.rollout_engine.backend, "retries", None)
        if generation_retries is not None:
            counters["server/generation_retries"] = generation_retries
        return counters

    def completion_samples(self) -> list[dict[str, Any]]:
        """This process's records of the latest rollout batch (with ``log_completions``): prompt and completion as
        the reward functions saw them, rewards per function, advantage, ``log_extra`` columns, token ids and the
        model/tool mask, printable segments, and the step weights and divergences (see :mod:`.completions_log`)."""
        return self._last_samples

    def _student_logprobs(self, input_ids, attention_mask, completion_start, token_mask, with_entropy=False):
        return sampled_token_logprobs(
            self.model, input_ids, attention_mask, completion_start, token_mask,
            temperature=self.args.temperature, chunk_size=self.args.logprob_chunk_size, with_entropy=with_entropy,
        )

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("SODTrainer does not return outputs from compute_loss.")
        from .objective import clipped_surrogate_loss

        args = self.args
        mode = "train" if model.training else "eval"
        loss_mask = inputs["loss_mask"]
        if "sequence_advantages" in inputs:  # on-policy batch: π_old is this forward pass (on_policy.py)
            logps, entropy = sampled_token_logprobs(
                model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_start"],
                inputs["assistant_mask"], temperature=args.temperature, chunk_size=args.logprob_chunk_size,
                with_entropy=True,
            )
            old_logps, advantages, loss_mask = self._on_policy_weighting.terms(logps, entropy, inputs)
            if self._on_policy_weighting.batch_complete():
                self._log_on_policy_metrics(mode)
        else:
            logps, _ = sampled_token_logprobs(
                model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_start"], loss_mask,
                temperature=args.temperature, chunk_size=args.logprob_chunk_size,
            )
            old_logps, advantages = inputs["old_logps"], inputs["advantages"]
        if args.loss_type == "grpo":
            # mean over each sequence's tokens, then a sum over sequences / global number of sequences
            per_sequence = loss_mask.sum(1, keepdim=True).clamp(min=1)
            token_scale = loss_mask / per_sequence
        else:
            token_scale = loss_mask.to(logps.dtype)
        normalizer = inputs["normalizer"] / self.accelerator.num_processes  # DDP averages gradients
        loss, stats = clipped_surrogate_loss(
            logps, old_logps, advantages, token_scale,
            epsilon_low=args.epsilon, epsilon_high=args.epsilon_high, dual_clip=args.dual_clip,
            normalizer=normalizer,
        )
        self._log_clip_ratios(mode, stats, loss_mask.bool())
        finite = bool(torch.isfinite(loss))
        self._metrics[mode]["skipped_updates"].append(0.0 if finite else 1.0)
        if not finite:
            logger.warning("Non-finite loss (%s) at step %d: this optimizer step is skipped (counted in "
                           "skipped_updates).",
                           float(loss.detach()), self.state.global_step)
            self._skip_update = True
            loss = (logps * 0.0).sum()
        return loss

    def create_optimizer(self, model=None):
        """The optimizer, with a guard that skips a step in which any micro-batch had a non-finite loss."""
        optimizer = super().create_optimizer(model)
        if not getattr(optimizer, "_sod_guarded", False):
            step = optimizer.step

            def guarded_step(*args, **kwargs):
                skip = torch.tensor(float(self._skip_update), device=self.accelerator.device)
                self._skip_update = False
                if self.accelerator.reduce(skip, reduction="sum").item() > 0:  # every process skips together
                    optimizer.zero_grad(set_to_none=True)
                    return None
                return step(*args, **kwargs)

            # bound as a method: the scheduler and a second train() in the same process unwrap step.__func__
            optimizer.step = types.MethodType(lambda _optimizer, *a, **k: guarded_step(*a, **k), optimizer)
            optimizer._sod_guarded = True
        return optimizer

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: roll out the eval prompts with the tool, score them (metrics logged as ``eval_*``)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """As ``Trainer.evaluate``; the returned dict also holds the rollout metrics (``eval_accuracy``, ...)."""
        metrics = super().evaluate(*args, **kwargs)
        last = self.state.log_history[-1] if self.state.log_history else {}
        metrics.update({key: value for key, value in last.items() if key.startswith("eval_") and key not in metrics})
        return metrics

    def close(self) -> None:
        """Stop the tool worker pool (called automatically at exit)."""
        self.rollout_engine.close()
