"""SODConfig: every knob of SOD training, in TRL's style, with one source of truth for defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from .grpo_compat import (
    GRPOUnsupportedArguments,
    check_unsupported_fields,
    resolve_activation_checkpointing,
    resolve_bf16,
    resolve_generation_batch,
)
from .objective import STEP_WEIGHTING_SCHEMES

__all__ = ["SODConfig"]

logger = logging.getLogger(__name__)


@dataclass
class SODConfig(GRPOUnsupportedArguments, TrainingArguments):
    r"""
    Configuration class for [`SODTrainer`].

    Field names follow TRL's `GRPOConfig` and `DistillationConfig` wherever the concept is TRL's; SOD's
    own knobs have their own names (TRL already uses `delta` and `epsilon`). Defaults follow the paper's
    recipe (SOD_SPEC §5–§8) except where noted as "(laptop default)".

    Parameters that control the model:
        model_init_kwargs: kwargs for `AutoModelForCausalLM.from_pretrained` when `model` is a name or path.
        teacher_model_name_or_path: the teacher, when `SODTrainer(teacher_model=None)`.
        teacher_model_init_kwargs: kwargs for loading the teacher.
        teacher_tokenizer_name_or_path: the teacher's tokenizer when it differs from the student's (cross-tokenizer
            distillation; TRL GOLD's name).
        disable_dropout: disable dropout in student and teacher (log-probs must be deterministic).

    Parameters that control the data:
        max_prompt_length: prompts longer than this (in tokens) are handled by `prompt_truncation`.
        prompt_truncation: `"error"` (say which row) or `"left"` (keep the end of the prompt).

    Parameters that control the generation (rollouts):
        num_generations: G, samples per prompt (paper: 16; laptop default 8, as TRL).
        max_completion_length: response budget per trajectory, tool tokens included (paper: 20480;
            laptop default 4096).
        generation_batch_size / steps_per_generation: as in TRL's GRPO; one rollout batch feeds
            `steps_per_generation` micro-batches, each reused `num_iterations` times.
        max_tool_calling_iterations: tool rounds per trajectory, counted as TRL counts them: each round runs the
            turn's tool call(s), shows the output and lets the model generate again, so a trajectory has at most
            this + 1 assistant turns (paper: 16 tool turns).
        max_tool_response_chars: tool output shown to the model is cut to this many characters, head + tail.

    Parameters that control the loss:
        step_weighting: `sod` (default), `uniform` (vanilla OPD), `decay`, `mask_after_error`, `sod_uncapped`,
            `iw_opd` (IW-OPD's per-token weights, as TRL's `trl.experimental.iw_opd`), `sod_median_ref` ([ours], not
            the paper's: SOD with the reference max(d_1, median d of the batch's steps), docs/ablation.md sitting 4).
        sod_epsilon, sod_delta: eps and delta of w_k = min((d_1+eps)/(d_k+eps), 1+delta).
        decay_rate: the `decay` scheme's factor per step after the first erroneous step.
        iw_opd_gamma, iw_opd_epsilon: gamma and the stabilizer of `iw_opd`'s w_t = 1 + gamma * (1 - prefix / total)
            (TRL's IWOPDConfig names and defaults).
        opd_coef, grpo_coef: c_opd and c_grpo in A_t = c_grpo * A_hat + c_opd * w * (q - s).
        epsilon, epsilon_high: PPO clip range [1 - epsilon, 1 + epsilon_high] (clip-higher).
        dual_clip: cap on the per-token loss for negative advantages (`-A * dual_clip`); None disables.
        loss_type: `dapo` (token mean over the whole optimizer batch, the paper's) or `grpo` (per-sequence mean).

    Parameters that control the rewards:
        reward_weights: one weight per reward source (default all 1).
        reward_failure_policy: `raise` (a reward that raises fails the run, as TRL) or `contain` (logged, counted in
            `rewards/<name>/failures`, that reward left out for the batch).
        max_consecutive_reward_failures: with `contain`, stop after this many failing rollout batches in a row.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + [
        "model_init_kwargs", "teacher_model_init_kwargs", "generation_kwargs", "chat_template_kwargs",
        "transformers_continuous_batching_config",
    ]

    # ----------------------------------------------------------------- overridden TrainingArguments defaults
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (paper: 1e-6, constant)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (paper: constant)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps."})
    if "activation_checkpointing" not in TrainingArguments.__dataclass_fields__:  # transformers < 5.24
        gradient_checkpointing: bool = field(
            default=True, metadata={"help": "Recompute activations in the backward pass to save memory (TRL's "
                                    "default: True)."})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. None (TRL's default): True unless fp16 is set, on an accelerator "
                  "with bf16; False on a CPU (use_cpu, or no bf16-capable GPU)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep extra dataset columns: they reach the reward functions and environment."}
    )

    # ----------------------------------------------------------------- model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for loading the student when `model` is a string."}
    )
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher name or path, used when `teacher_model` is not passed."}
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for loading the teacher when it is a string."}
    )
    teacher_tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The teacher's tokenizer (TRL GOLD's name), when it is not the student's: the teacher then "
                  "scores the student's text in its own tokenization, aligned with the student's tokens on the "
                  "text. Default: the tokenizer saved with the teacher; the student's when none is found."},
    )
    teacher_server_url: str | None = field(
        default=None,
        metadata={"help": "Score with a teacher served by vLLM's OpenAI-compatible server at this URL "
                  "(prompt log-probs) instead of a local teacher model."},
    )
    teacher_server_timeout: float = field(
        default=600.0, metadata={"help": "Seconds one request to the teacher server may take; a longer one counts "
                                 "as hung and is retried."},
    )
    server_max_retries: int = field(
        default=5,
        metadata={"help": "Retries of a request to the teacher server or the vLLM generation server after a connection "
                  "error, a timeout or an HTTP 5xx. Past the last one the trainer saves a checkpoint and stops."},
    )
    server_retry_backoff: float = field(
        default=2.0, metadata={"help": "Seconds before the first retry, doubled for each next one (2, 4, 8, ...)."},
    )
    server_retry_max_backoff: float = field(
        default=60.0, metadata={"help": "Longest wait between two retries, seconds."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in student and teacher."})

    # ----------------------------------------------------------------- data
    max_prompt_length: int | None = field(
        default=2560, metadata={"help": "Maximum prompt length in tokens (paper: 2560). None: no limit."}
    )
    prompt_truncation: str = field(
        default="error",
        metadata={"help": "What to do with a prompt over `max_prompt_length`: 'error' (names the row) or 'left' "
                  "(drop tokens from the start).", "choices": ["error", "left"]},
    )
    shuffle_dataset: bool = field(default=True, metadata={"help": "Shuffle the training prompts."})
    validate_dataset: bool = field(
        default=True,
        metadata={"help": "Check every prompt row (columns, chat format, length) before training starts, so a bad "
                  "row fails at once with its index instead of hours into a run."},
    )
    chat_template_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra keyword arguments for `apply_chat_template` (e.g. enable_thinking)."}
    )

    # ----------------------------------------------------------------- generation
    num_generations: int = field(
        default=8, metadata={"help": "Samples per prompt, G (paper: 16; 8 by default as in TRL, for a first run)."}
    )
    max_completion_length: int = field(
        default=4096,
        metadata={"help": "Token budget per trajectory, tool observations included (paper: 20480; 4096 by default "
                  "so a first run on a laptop ends)."},
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Completions per rollout batch (global). Default: per_device_train_batch_size x "
                  "processes x steps_per_generation."},
    )
    steps_per_generation: int | None = field(
        default=None, metadata={"help": "Micro-batches per rollout batch. Default: gradient_accumulation_steps."}
    )
    num_iterations: int = field(default=1, metadata={"help": "Passes over each rollout batch (mu). Paper: 1."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (paper: 1.0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (paper: 1.0)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 disables."})
    min_p: float | None = field(default=None, metadata={"help": "Min-p sampling; None disables."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty; 1.0 disables."})
    generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra keyword arguments for the generation backend."}
    )
    max_tool_calling_iterations: int = field(
        default=16,
        metadata={"help": "Tool rounds per trajectory, counted as TRL counts them: the tool runs, its output is shown "
                  "and the model generates again, so at most this + 1 assistant turns (paper: 16 tool turns)."},
    )
    max_tool_response_chars: int = field(
        default=256, metadata={"help": "Tool output shown to the model is cut to this many characters (paper: 256)."}
    )
    tool_call_format: str = field(
        default="fenced",
        metadata={"help": "How tool calls are written: 'fenced' (```python blocks), 'code_tag' (<code>), 'json' "
                  "(Qwen3/hermes <tool_call>).", "choices": ["fenced", "code_tag", "json"]},
    )
    tool_timeout: float = field(default=10.0, metadata={"help": "Wall-clock limit of one tool call, seconds."})
    tool_workers: int = field(default=8, metadata={"help": "Tool calls of a batch run concurrently on this many threads."})
    tool_persistent: bool = field(
        default=False,
        metadata={"help": "Keep one Python worker per trajectory so variables survive across turns (the paper's "
                  "interpreter is stateless: False)."},
    )
    tool_memory_mb: int = field(default=1024, metadata={"help": "Address-space limit of each tool process, MiB."})
    tool_max_processes: int = field(default=64, metadata={"help": "Process limit of each tool call's sandbox."})
    tool_isolation: str = field(
        default="auto",
        metadata={"help": "Sandbox isolation: 'auto' (bubblewrap namespaces when available, else rlimits with a "
                  "warning), 'bwrap', or 'rlimits'.", "choices": ["auto", "bwrap", "rlimits"]},
    )
    tool_response_template: str | None = field(
        default=None,
        metadata={"help": "Text inserted after an assistant turn with a tool call, with '{observation}' "
                  "standing for the tool output. Default: derived from the chat template's tool role."},
    )
    use_vllm: bool = field(default=False, metadata={"help": "Generate rollouts with vLLM instead of HF generate."})
    vllm_mode: str = field(
        default="colocate",
        metadata={"help": "'colocate' (a vLLM engine in the training process) or 'server' (a `trl vllm-serve` "
                  "server).", "choices": ["colocate", "server"]},
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU memory share of the colocated vLLM engine."}
    )
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata={"help": "Offload vLLM weights and cache between rollout batches."}
    )
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "vLLM context length. Default: max_prompt_length + max_completion_length."}
    )
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Tensor parallel size (colocate)."})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "Base URL of the vLLM server."})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "Host of the vLLM server."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Port of the vLLM server."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "Seconds to wait for the vLLM server."})

    # ----------------------------------------------------------------- loss
    step_weighting: str = field(
        default="sod",
        metadata={"help": "Step weighting scheme.", "choices": list(STEP_WEIGHTING_SCHEMES)},
    )
    sod_epsilon: float = field(default=1e-6, metadata={"help": "eps in w_k = min((d_1+eps)/(d_k+eps), 1+delta)."})
    sod_delta: float = field(default=0.2, metadata={"help": "delta: step weights are capped at 1 + delta."})
    decay_rate: float = field(default=0.9, metadata={"help": "Per-step factor of the 'decay' scheme after an error."})
    iw_opd_gamma: float = field(
        default=0.5, metadata={"help": "gamma of step_weighting='iw_opd': w_t = 1 + gamma * (1 - prefix / total)."})
    iw_opd_epsilon: float = field(
        default=1e-8, metadata={"help": "Stabilizer of step_weighting='iw_opd' (floor of the total |q - s|)."})
    opd_coef: float = field(default=1.0, metadata={"help": "c_opd: weight of the step-weighted distillation term."})
    grpo_coef: float = field(default=1.0, metadata={"help": "c_grpo: weight of the GRPO group advantage (0: pure SOD)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower PPO clip: ratio >= 1 - epsilon."})
    epsilon_high: float | None = field(
        default=0.28, metadata={"help": "Upper PPO clip (clip-higher): ratio <= 1 + epsilon_high. None: epsilon."}
    )
    dual_clip: float | None = field(
        default=3.0, metadata={"help": "Dual clip c: per-token loss capped at -A * c for A < 0. None disables."}
    )
    scale_rewards: str = field(
        default="group",
        metadata={"help": "'group' divides the group-centred reward by the group std; 'none' does not.",
                  "choices": ["group", "none"]},
    )
    loss_type: str = field(
        default="dapo",
        metadata={"help": "'dapo': token mean over all model tokens of the optimizer batch (paper); 'grpo': mean "
                  "per sequence, then over sequences.", "choices": ["dapo", "grpo"]},
    )
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Exclude trajectories cut by the token budget from the loss."}
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "Weights of the reward functions (default: all 1)."}
    )
    reward_failure_policy: str = field(
        default="raise",
        metadata={"help": "A reward function that raises: 'raise' fails the run with its traceback (as TRL); "
                  "'contain' logs it, leaves that reward out (None) for the batch, counts it in "
                  "rewards/<name>/failures and trains on.", "choices": ["raise", "contain"]},
    )
    max_consecutive_reward_failures: int | None = field(
        default=3,
        metadata={"help": "With reward_failure_policy='contain': stop the run after this many rollout batches in a "
                  "row in which a reward function failed (None: never)."},
    )
    step_segmenter: str = field(
        default="turn",
        metadata={"help": "Built-in step segmenter: 'turn' (one assistant turn = one step), 'fixed_length', "
                  "'blank_line' (text-only SOD).", "choices": ["turn", "fixed_length", "blank_line"]},
    )
    segment_step_tokens: int = field(default=256, metadata={"help": "Step length of the 'fixed_length' segmenter."})
    logprob_chunk_size: int = field(
        default=1024,
        metadata={"help": "Tokens per chunk when turning hidden states into log-probs: no (batch, seq, vocab) "
                  "tensor is built."},
    )

    # ----------------------------------------------------------------- logging
    log_completions: bool = field(
        default=False,
        metadata={"help": "At each logging step, print sample trajectories and write TRL's completions table "
                  "(prompt, completion, rewards, advantage, plus step weights) to <output_dir>/completions/*.parquet "
                  "and to wandb / trackio when they are in report_to."},
    )
    num_completions_to_print: int | None = field(default=1, metadata={"help": "How many trajectories to print."})
    log_step_indices: int = field(default=4, metadata={"help": "Log mean d_k and w_k for the first this-many steps."})
    pattern_threshold: float = field(
        default=0.8, metadata={"help": "Weight-pattern threshold: stable if min w >= it, erroneous if last w < it."}
    )

    def __post_init__(self):
        resolve_bf16(self)  # before TrainingArguments checks bf16 against the hardware
        resolve_activation_checkpointing(self)
        super().__post_init__()
        check_unsupported_fields(self)
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)  # as TRL
        resolve_generation_batch(self)
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        self._check()

    def _check(self) -> None:
        """Reject contradictory or out-of-range values at construction: each message names the field, the value
        and a fix (see docs/troubleshooting.md, "Bad inputs and what you see")."""
        if self.reward_failure_policy not in ("raise", "contain"):
            raise ValueError(f"reward_failure_policy must be 'raise' (fail the run, as TRL) or 'contain' (count and "
                             f"train on), got {self.reward_failure_policy!r}.")
        if self.max_consecutive_reward_failures is not None and self.max_consecutive_reward_failures < 1:
            raise ValueError(f"max_consecutive_reward_failures must be >= 1 or None (never stop), got "
                             f"{self.max_consecutive_reward_failures}.")

        def fail(message: str):
            raise ValueError(message)

        for name in _OWN_FIELDS:  # the `choices` of SODConfig's own fields (the CLI enforces them too)
            choices = type(self).__dataclass_fields__[name].metadata.get("choices")
            if choices is not None and getattr(self, name) not in choices:
                fail(f"{name}={getattr(self, name)!r} is not one of {tuple(choices)}; pick one of them.")
        if self.num_generations < 1:
            fail(f"num_generations must be >= 1, got {self.num_generations}.")
        if self.num_generations < 2 and self.grpo_coef != 0:
            fail(
                f"num_generations={self.num_generations} with grpo_coef={self.grpo_coef}: the GRPO term compares "
                "the samples of one prompt, so it needs at least 2 (as TRL's GRPO does). Set num_generations >= 2 "
                "(paper: 16), or grpo_coef=0 for pure step-weighted distillation."
            )
        per_process = self.per_device_train_batch_size * self.steps_per_generation
        if self.generation_batch_size != per_process * self.world_size:
            fail(
                f"generation_batch_size={self.generation_batch_size} must equal per_device_train_batch_size "
                f"({self.per_device_train_batch_size}) x processes ({self.world_size}) x steps_per_generation "
                f"({self.steps_per_generation}) = {per_process * self.world_size}; set only one of "
                "generation_batch_size and steps_per_generation."
            )
        if per_process % self.num_generations:
            fail(
                f"Each process generates per_device_train_batch_size x steps_per_generation = {per_process} "
                f"completions per rollout batch, which is not a multiple of num_generations="
                f"{self.num_generations}. Make it one (e.g. per_device_train_batch_size="
                f"{self.num_generations}) so every process holds whole groups."
            )
        if self.steps_per_generation % self.gradient_accumulation_steps:
            fail(
                f"steps_per_generation={self.steps_per_generation} must be a multiple of "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} (a rollout batch feeds whole "
                f"optimizer steps); e.g. steps_per_generation={self.gradient_accumulation_steps}."
            )
        if self.num_iterations < 1:
            fail(f"num_iterations must be >= 1 (passes over each rollout batch; paper: 1), got {self.num_iterations}.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            fail(f"max_prompt_length must be >= 1 token, or None for no limit; got {self.max_prompt_length}.")
        if self.max_completion_length < 1:
            fail(f"max_completion_length must be >= 1, got {self.max_completion_length}.")
        if self.max_tool_calling_iterations < 1:
            fail(f"max_tool_calling_iterations must be >= 1, got {self.max_tool_calling_iterations}.")
        if self.temperature <= 0:
            fail(f"temperature must be > 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1] (1.0 disables nucleus sampling), got {self.top_p}.")
        if self.top_k < 0:
            fail(f"top_k must be >= 0 (0 disables top-k sampling), got {self.top_k}.")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            fail(f"min_p must be in [0, 1], or None to disable it; got {self.min_p}.")
        if self.repetition_penalty <= 0:
            fail(f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty}.")
        if self.sod_epsilon <= 0:
            fail(f"sod_epsilon must be > 0, got {self.sod_epsilon}.")
        if self.sod_delta < 0:
            fail(f"sod_delta must be >= 0 (step weights are capped at 1 + sod_delta; paper: 0.2), "
                 f"got {self.sod_delta}.")
        if self.iw_opd_gamma < 0:
            fail(f"iw_opd_gamma must be >= 0 (step_weighting='iw_opd': w_t = 1 + gamma * (1 - prefix / total); "
                 f"TRL's default 0.5), got {self.iw_opd_gamma}.")
        if not 0 <= self.decay_rate <= 1:
            fail(f"decay_rate must be in [0, 1] (the 'decay' scheme's factor per step after an error; default 0.9), "
                 f"got {self.decay_rate}.")
        if self.opd_coef < 0 or self.grpo_coef < 0:
            fail(f"opd_coef and grpo_coef must be >= 0 (got opd_coef={self.opd_coef}, grpo_coef={self.grpo_coef}); "
                 "use 0 to switch a term off.")
        if self.opd_coef == 0 and self.grpo_coef == 0:
            fail("opd_coef and grpo_coef are both 0: there is nothing to learn from. Set opd_coef=1 (distillation), "
                 "grpo_coef=1 (rewards), or both (the paper's recipe).")
        if self.epsilon < 0 or self.epsilon_high < 0:
            fail(f"epsilon and epsilon_high must be >= 0 (PPO clip range [1 - epsilon, 1 + epsilon_high]; paper: 0.2 "
                 f"and 0.28), got epsilon={self.epsilon}, epsilon_high={self.epsilon_high}.")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            fail(f"dual_clip must be > 1 (paper: 3.0) or None, got {self.dual_clip}.")
        for name in ("tool_timeout", "tool_workers", "tool_memory_mb", "tool_max_processes", "segment_step_tokens",
                     "logprob_chunk_size"):
            if getattr(self, name) <= 0:
                fail(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.server_max_retries < 0:
            fail(f"server_max_retries must be >= 0 (0: no retry), got {self.server_max_retries}.")
        if self.server_retry_backoff < 0 or self.server_retry_max_backoff < 0 or self.teacher_server_timeout <= 0:
            fail(f"server_retry_backoff={self.server_retry_backoff} and server_retry_max_backoff="
                 f"{self.server_retry_max_backoff} must be >= 0 and teacher_server_timeout={self.teacher_server_timeout} "
                 "> 0 (seconds).")
        if self.teacher_model_name_or_path is not None and self.teacher_server_url is not None:
            fail(f"Both teacher_model_name_or_path={self.teacher_model_name_or_path!r} and teacher_server_url="
                 f"{self.teacher_server_url!r} are set: the teacher is either loaded locally or served. Keep one.")
        if self.use_vllm:
            if not 0 < self.vllm_gpu_memory_utilization <= 1:
                fail(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}.")
            if self.vllm_max_model_length is not None and self.max_prompt_length is not None and \
                    self.vllm_max_model_length < self.max_prompt_length + self.max_completion_length:
                fail(
                    f"vllm_max_model_length={self.vllm_max_model_length} is shorter than max_prompt_length + "
                    f"max_completion_length = {self.max_prompt_length} + {self.max_completion_length} = "
                    f"{self.max_prompt_length + self.max_completion_length}, so long trajectories would fail in vLLM "
                    "mid-run. Raise it, or leave it unset (the default is that sum)."
                )
        else:
            changed = [f"{name}={getattr(self, name)!r}" for name in _VLLM_FIELDS
                       if getattr(self, name) != type(self).__dataclass_fields__[name].default]
            if changed:  # a warning, not an error: a recipe may keep its vLLM block and run with use_vllm=False
                logger.warning("use_vllm=False, so %s %s ignored (rollouts use HF generate). Set use_vllm=True to "
                               "generate with vLLM, or drop %s.", ", ".join(changed),
                               "is" if len(changed) == 1 else "are", "it" if len(changed) == 1 else "them")


_OWN_FIELDS = tuple(f.name for f in fields(SODConfig) if f.name not in TrainingArguments.__dataclass_fields__)
_VLLM_FIELDS = tuple(name for name in _OWN_FIELDS if name.startswith("vllm_"))


def retry_policy(args: SODConfig):
    """The :class:`~sod_trainer.retry.RetryPolicy` of ``args`` (teacher and generation servers)."""
    from .retry import RetryPolicy

    return RetryPolicy(max_retries=args.server_max_retries, backoff=args.server_retry_backoff,
                       max_backoff=args.server_retry_max_backoff)
