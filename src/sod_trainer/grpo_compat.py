"""TRL ``GRPOConfig`` options that SOD does not support, and TRL's rules for the options it shares.

A TRL user's ``GRPOConfig`` keyword arguments and YAML keys must either work the same in :class:`SODConfig`
or be refused at construction with a message saying what differs: they are never silently ignored. The
options SOD does not implement are declared here (with TRL's names and, unless noted, TRL's defaults) so
that ``SODConfig(beta=0.04)`` or ``beta: 0.04`` in a recipe fails with the reason, instead of an
"unexpected keyword" error or a silent no-op. docs/coming_from_trl.md lists every GRPOConfig field;
tests/test_grpo_compat.py checks that list against the installed TRL.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["GRPOUnsupportedArguments", "UNSUPPORTED_FIELDS", "check_unsupported_fields", "unsupported_reason",
           "resolve_activation_checkpointing", "resolve_bf16", "resolve_generation_batch"]

_HELP_PREFIX = "GRPOConfig option, not supported by SOD: "

_NO_REFERENCE = ("SOD keeps no reference model: the student is anchored to the teacher through the step-weighted "
                 "distillation term (opd_coef).")
_NO_VLLM_IS = ("SOD recomputes the old log-probs with the training model after generation and does not reweight by "
               "vLLM's sampling log-probs.")
_LOSS = "SOD's loss is the clipped surrogate of the paper (loss_type 'dapo' or 'grpo')"


def _unsupported(default: Any, reason: str) -> Any:
    """A GRPOConfig field SOD refuses when set to anything but ``default``."""
    return field(default=default, metadata={"help": _HELP_PREFIX + reason})


@dataclass
class GRPOUnsupportedArguments:
    """GRPOConfig fields that SODConfig accepts only at their default (see docs/coming_from_trl.md)."""

    router_aux_loss_coef: float | None = _unsupported(
        None, "SOD's loss has no Mixture-of-Experts load-balancing term.")
    cast_lm_head_to_fp32: bool = _unsupported(
        False, "SOD computes log-probs from the hidden states in chunks (logprob_chunk_size) in the model's dtype.")
    num_generations_eval: int | None = _unsupported(
        None, "evaluation samples num_generations completions per prompt, as training does.")
    ds3_gather_for_generation: bool = _unsupported(
        True, "HF generation under ZeRO-3 always gathers the student's weights.")
    pad_to_multiple_of: int | str | None = _unsupported(
        "auto", "SOD pads each batch to its longest sequence (no Neuron shape bucketing).")
    cache_implementation: str | None = _unsupported(
        None, "HF generation uses the model's default cache; pass generation_kwargs for generate() options.")
    vllm_model_impl: str = _unsupported("vllm", "the vLLM engine uses its own model implementation.")
    vllm_structured_outputs_regex: str | None = _unsupported(
        None, "tool-use trajectories are free text; structured outputs would constrain the tool calls.")
    vllm_group_port: int = _unsupported(51216, "server mode uses TRL's default weight-update port 51216.")
    beta: float = _unsupported(0.0, f"no KL term to a reference model. {_NO_REFERENCE}")
    delta: float | None = _unsupported(
        None, "two-sided clipping is not implemented; SOD caps the loss of negative advantages with dual_clip "
              "(paper: 3.0).")
    sapo_temperature_neg: float = _unsupported(1.05, f"{_LOSS}; there is no 'sapo' loss.")
    sapo_temperature_pos: float = _unsupported(1.0, f"{_LOSS}; there is no 'sapo' loss.")
    vespo_k_pos: float = _unsupported(2.0, f"{_LOSS}; there is no 'vespo' loss.")
    vespo_lambda_pos: float = _unsupported(3.0, f"{_LOSS}; there is no 'vespo' loss.")
    vespo_k_neg: float = _unsupported(3.0, f"{_LOSS}; there is no 'vespo' loss.")
    vespo_lambda_neg: float = _unsupported(2.0, f"{_LOSS}; there is no 'vespo' loss.")
    importance_sampling_level: str = _unsupported(
        "token", "importance ratios are per token (GSPO's 'sequence' level is not implemented).")
    multi_objective_aggregation: str = _unsupported(
        "sum_then_normalize", "rewards are weighted, summed, then normalized per group (TRL's default).")
    sync_ref_model: bool = _unsupported(False, _NO_REFERENCE)
    ref_model_mixup_alpha: float = _unsupported(0.6, _NO_REFERENCE)
    ref_model_sync_steps: int = _unsupported(512, _NO_REFERENCE)
    top_entropy_quantile: float = _unsupported(
        1.0, "every model token is in the loss; SOD's step weights, not an entropy quantile, select what to learn.")
    entropy_coef: float = _unsupported(0.0, f"{_LOSS}, with no entropy bonus.")
    use_adaptive_entropy: bool = _unsupported(False, f"{_LOSS}, with no entropy bonus.")
    entropy_coef_min: float = _unsupported(0.0, f"{_LOSS}, with no entropy bonus.")
    entropy_coef_max: float = _unsupported(1.0, f"{_LOSS}, with no entropy bonus.")
    entropy_coef_delta: float = _unsupported(0.005, f"{_LOSS}, with no entropy bonus.")
    entropy_target: float = _unsupported(0.2, f"{_LOSS}, with no entropy bonus.")
    vllm_importance_sampling_correction: bool = _unsupported(
        False, f"{_NO_VLLM_IS} (TRL's default is True: TRL corrects, SOD does not, so SOD's default is False.)")
    vllm_importance_sampling_mode: str = _unsupported("sequence_mask", _NO_VLLM_IS)
    vllm_importance_sampling_clip_max: float | None = _unsupported(3.0, _NO_VLLM_IS)
    vllm_importance_sampling_clip_min: float | None = _unsupported(None, _NO_VLLM_IS)
    vllm_importance_sampling_cap: float | None = _unsupported(None, _NO_VLLM_IS)
    off_policy_mask_threshold: float | None = _unsupported(
        None, "off-policy sequence masking is not implemented (rollouts are on-policy; num_iterations reuses them).")
    use_bias_correction_kl: bool = _unsupported(True, f"there is no KL term (beta). {_NO_REFERENCE}")
    log_multimodal: bool = _unsupported(True, "SOD trains text-only models.")
    log_unique_prompts: bool = _unsupported(False, "log_completions logs every trajectory.")
    log_completions_hub_repo: str | None = _unsupported(None, "completions are not uploaded to the Hub.")
    use_transformers_continuous_batching: bool = _unsupported(
        False, "rollouts use HF generate or vLLM (use_vllm).")
    transformers_continuous_batching_config: dict | str | None = _unsupported(
        None, "rollouts use HF generate or vLLM (use_vllm).")
    use_transformers_paged: bool = _unsupported(False, "rollouts use HF generate or vLLM (use_vllm).")


UNSUPPORTED_FIELDS = {item.name: item for item in fields(GRPOUnsupportedArguments)}


def unsupported_reason(config_class: type, name: str) -> str | None:
    """Why ``config_class`` refuses the GRPOConfig option ``name`` (None when it supports it)."""
    item = config_class.__dataclass_fields__.get(name)
    if item is None or item is not UNSUPPORTED_FIELDS.get(name):  # a subclass that defines the field supports it
        return None
    return item.metadata["help"].removeprefix(_HELP_PREFIX)


def check_unsupported_fields(config: Any) -> None:
    """Raise ``ValueError`` naming every GRPOConfig option of ``config`` that SOD does not support and that is
    set to another value than its default."""
    problems = []
    for name, item in UNSUPPORTED_FIELDS.items():
        reason = unsupported_reason(type(config), name)
        if reason is not None and getattr(config, name) != item.default:
            problems.append(f"{name}={getattr(config, name)!r}: {reason}")
    if problems:
        raise ValueError(
            "These GRPOConfig options are not supported by SODTrainer: " + "; ".join(problems) + " Remove them (or "
            "set them to their defaults); docs/coming_from_trl.md lists what each GRPOConfig option does in SOD."
        )


def _bf16_is_available() -> bool:
    from transformers.utils import is_torch_bf16_gpu_available

    return is_torch_bf16_gpu_available()


def resolve_bf16(config: Any) -> None:
    """TRL's rule for ``bf16=None``: True unless ``fp16`` is set, on an accelerator that has bf16. On a CPU
    (``use_cpu``, or no bf16-capable GPU), where TRL either fails or runs CPU autocast, it is False."""
    if config.bf16 is None:
        config.bf16 = not config.fp16 and not config.use_cpu and _bf16_is_available()


def resolve_activation_checkpointing(config: Any) -> None:
    """TRL's default ``gradient_checkpointing=True``, unless the run sets it (or transformers' newer name,
    ``activation_checkpointing``) itself."""
    # transformers >= 5.24 (the old name is an alias of the new; both None when unset). Older versions: SODConfig
    # declares gradient_checkpointing=True itself.
    if getattr(config, "activation_checkpointing", False) is None and config.gradient_checkpointing is None:
        config.activation_checkpointing = True


def resolve_generation_batch(config: Any) -> None:
    """TRL's rule: ``generation_batch_size`` or ``steps_per_generation`` may be set alone; the other follows."""
    global_batch = config.per_device_train_batch_size * config.world_size
    if config.generation_batch_size is None and config.steps_per_generation is None:
        config.steps_per_generation = config.gradient_accumulation_steps
    elif config.steps_per_generation is None:
        if config.generation_batch_size % global_batch:
            raise ValueError(
                f"generation_batch_size={config.generation_batch_size} must be a multiple of the global batch size "
                f"per_device_train_batch_size ({config.per_device_train_batch_size}) x processes "
                f"({config.world_size}) = {global_batch}; e.g. generation_batch_size={2 * global_batch}."
            )
        config.steps_per_generation = config.generation_batch_size // global_batch
    if config.generation_batch_size is None:
        config.generation_batch_size = global_batch * config.steps_per_generation
