"""Shared helpers for the benchmarks: tiny offline models, a tool-free environment, interleaved timing,
peak-memory probes, tables and JSON results.

Every benchmark compares variants side by side in one process (or one subprocess per variant for peak
memory), interleaving repetitions (ABAB... with the order rotated each round) so that the noise of a
shared machine hits every variant alike, and reports medians and ratios. Absolute times are context only.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import resource
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

try:  # run from a checkout even when the package is not installed
    import sod_trainer  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# SOD_BENCH_RESULTS_DIR: elsewhere (scripts/gpu_cost_curves.sh writes straight into the device's $OUT)
RESULTS_DIR = Path(os.environ.get("SOD_BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results")
# One intra-op thread by default: on this shared, oversubscribed 2-core machine a second OpenMP thread made
# a small linear layer 5-100x slower (it spins waiting for a descheduled partner); see docs/performance.md.
THREADS = int(os.environ.get("SOD_BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)


# ---------------------------------------------------------------------------------------------- models and data
def tokenizer():
    """The toy ChatML tokenizer (512 tokens), built in process."""
    from sod_trainer.toy.tokenizer import build_tokenizer

    return build_tokenizer()


def tiny_model(tok, *, hidden: int = 128, layers: int = 2, vocab: int | None = None, seed: int = 0,
               intermediate: int | None = None):
    """A tiny Qwen3 built from a config (nothing from the Hub), as in tests/conftest.py, sizes as given.

    ``vocab`` may exceed the tokenizer's 512 tokens to give the output head a realistic share of the
    compute; ids past the tokenizer decode to nothing, which is harmless without tools.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    heads = max(2, hidden // 32)
    config = Qwen3Config(
        vocab_size=vocab or len(tok), hidden_size=hidden, intermediate_size=intermediate or 3 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=32,
        max_position_embeddings=4096, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None, tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prompt_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Short arithmetic prompts in TRL's conversational prompt format (same token length for every row)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} * {b}? Answer in \\boxed{{}}."}],
                     "answer": str(a * b)})
    return rows


def constant_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """A reward that costs nothing and varies (so GRPO advantages are non-zero): the completion's length parity."""
    from sod_trainer.rewards import completion_text  # conversational completions are message lists (as TRL)

    return [float(len(completion_text(c)) % 2) for c in completions]


from sod_trainer.environments.base import ToolEnvironment, ToolResult  # noqa: E402


class NoToolEnvironment(ToolEnvironment):
    """Tools off: every turn is a final answer (one step per trajectory)."""

    def step(self, turn_text: str) -> ToolResult:
        return ToolResult(observation=None, done=True)


# ---------------------------------------------------------------------------------------------- timing
class StepTimer:
    """A ``TrainerCallback`` that records the wall time of every optimizer step (on_step_begin → on_step_end).

    The span covers the rollout (generation and scoring happen inside ``training_step``), the loss,
    backward, gradient clipping, the optimizer step and ``zero_grad``; logging comes after it.
    """

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self._start = None

            def on_step_begin(self, args, state, control, **kwargs):
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if self._start is not None:
                    self.times.append(time.perf_counter() - self._start)
                    self._start = None

        return _Timer()


def interleave(variants: dict[str, Callable[[], list[float] | float]], rounds: int,
               log: Callable[[str], None] | None = print) -> dict[str, list[float]]:
    """Run every variant once per round, rotating the order each round (ABC, BCA, CAB, ...).

    Each call returns one time or a list of times; returns all times per variant.
    """
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            gc.collect()
            result = variants[name]()
            result = result if isinstance(result, list) else [result]
            times[name].extend(result)
            if log:
                log(f"  round {r + 1}/{rounds} {name}: " + ", ".join(f"{t:.3f}" for t in result))
    return times


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min, max and relative spread (IQR / median) of a sample."""
    values = sorted(values)
    if not values:
        return {}
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    median = statistics.median(values)
    return {"n": len(values), "median": median, "q1": q[0], "q3": q[2], "min": values[0], "max": values[-1],
            "iqr_over_median": (q[2] - q[0]) / median if median else float("nan")}


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Median of a/b over rounds (pairs taken in order) and the plain ratio of medians."""
    pairs = [x / y for x, y in zip(a, b) if y > 0]
    return {"ratio_of_medians": statistics.median(a) / statistics.median(b),
            "median_of_paired_ratios": statistics.median(pairs) if pairs else float("nan"),
            "paired_ratio_q1": statistics.quantiles(pairs, n=4)[0] if len(pairs) >= 2 else float("nan"),
            "paired_ratio_q3": statistics.quantiles(pairs, n=4)[2] if len(pairs) >= 2 else float("nan")}


# ---------------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds in a thread; ``peak - baseline`` is the extra
    memory a block of code needed at its worst moment (ru_maxrss cannot be reset, so this is used for
    deltas; one subprocess per variant gives clean ru_maxrss peaks as a cross-check)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        self.baseline = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.baseline


def measure_call(run: Callable[[Any], Any], batch: Any) -> dict[str, float]:
    """Extra peak RSS (ru_maxrss and sampled) and wall time of ``run(batch)`` in this process, in MiB / seconds."""
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    with PeakRSS() as probe:
        run(batch)
    elapsed = time.perf_counter() - start
    peak = max(max_rss_bytes(), probe.peak)
    return {"extra_peak_mib": mib(peak - before), "sampled_extra_peak_mib": mib(probe.delta),
            "baseline_rss_mib": mib(before), "seconds": elapsed}


class IncrementEnv:
    """TRL's documented environment shape: ``reset(**kwargs)`` and one public, typed, documented tool method."""

    def __init__(self):
        self._counter = 0

    def reset(self, **kwargs) -> None:
        self._counter = 0

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


# ---------------------------------------------------------------------------------------------- output
def machine_info() -> dict[str, Any]:
    import transformers
    import trl

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "load_average_at_save": load,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub-markdown table."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any], quick: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}{'_quick' if quick else ''}.json"
    payload = {"benchmark": name, "quick": quick, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"saved {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path


def mib(n: float) -> float:
    return n / 2**20


# ---------------------------------------------------------------------------------------------- driving trainers
class ManualStepper:
    """Drives a ``transformers.Trainer`` subclass one optimizer step at a time, exactly as the inner loop of
    ``Trainer.train`` does for ``gradient_accumulation_steps=1`` (training_step → clip → optimizer.step →
    scheduler.step → zero_grad), so that several trainers can be interleaved step by step in one process.
    Logging and callbacks are left out for every trainer alike."""

    def __init__(self, trainer, max_steps: int = 10_000, sync=None):
        self.trainer = trainer
        self.sync = sync or (lambda: None)  # torch.cuda.synchronize on a GPU: the wall time then covers the work
        optimizer = trainer.create_optimizer()
        if not hasattr(optimizer.step, "__func__"):
            # SODTrainer.create_optimizer replaces optimizer.step with a plain function, which torch's LR
            # scheduler cannot wrap (it needs a bound method); re-bind it (see docs/performance.md, "bugs found").
            import types

            plain_step = optimizer.step
            optimizer.step = types.MethodType(lambda _self, *a, **k: plain_step(*a, **k), optimizer)
        trainer.create_scheduler(num_training_steps=max_steps, optimizer=optimizer)
        trainer.model_wrapped = trainer.model
        self.iterator = iter(trainer.get_train_dataloader())
        self.max_grad_norm = trainer.args.max_grad_norm
        self.cpu_times: list[float] = []
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps

    def _next_batch(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.trainer.get_train_dataloader())
            return next(self.iterator)

    def step(self) -> float:
        """One optimizer step; returns its wall time and appends its process CPU time to ``cpu_times``.

        With one intra-op thread and no tool subprocesses, CPU time is the step's own compute, much less
        disturbed by other programs on a shared machine than wall time (which includes time descheduled)."""
        trainer = self.trainer
        batch = self._next_batch()
        self.sync()
        cpu_start = time.process_time()
        start = time.perf_counter()
        trainer.model.train()
        trainer.training_step(trainer.model, batch, None)
        if self.max_grad_norm and self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), self.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1
        self.sync()
        elapsed = time.perf_counter() - start
        self.cpu_times.append(time.process_time() - cpu_start)
        return elapsed


# ---------------------------------------------------------------------------------------------- multi-turn workloads
class CalculatorEnvironment(ToolEnvironment):
    """An in-process stand-in for the Python tool (no sandbox, no process): evaluates the arithmetic of the
    turn's ```python block; a name it does not know is an error observation, like a NameError would be."""

    stop_strings: tuple[str, ...] = ()

    def step(self, turn_text: str) -> ToolResult:
        import re

        blocks = re.findall(r"```python\n(.*?)```", turn_text, re.DOTALL)
        if not blocks:
            return ToolResult(observation=None, done=True)
        code = blocks[-1].strip().removeprefix("print(").removesuffix(")")
        try:
            value = eval(code, {"__builtins__": {}}, {})  # noqa: S307 - digits and operators only
            return ToolResult(observation=str(value), done=False, tool_called=True)
        except Exception as error:  # noqa: BLE001
            return ToolResult(observation=f"Traceback (most recent call last):\n{type(error).__name__}: {error}",
                              done=False, error=True, tool_called=True)


class ScriptedTurns:
    """A generation backend that costs (almost) nothing: trajectory i of a batch writes ``turns`` tool calls
    (every third one failing with a NameError), then a final answer. The turn index is read from the number
    of assistant headers in the context; the ids are the tokenizer's encoding of the canned text plus EOS."""

    def __init__(self, tok, turns: int = 3, filler: int = 8):
        self.tok = tok
        self.turns = turns
        self.eos_token_ids = {tok.eos_token_id}
        self.header = tok.encode("<|im_start|>assistant", add_special_tokens=False)
        words = " First, compute the product. Next, add the remainder." * filler
        self.texts = []
        for k in range(turns):
            code = "print(undefined_name * 7)" if k % 3 == 2 else f"print({123 + k} * {45 + k})"
            self.texts.append(f"Step {k + 1}.{words}\n```python\n{code}\n```")
        self.texts.append(f"The answer is \\boxed{{5535}}.{words}")
        self.ids = [tok.encode(text, add_special_tokens=False) + [tok.eos_token_id] for text in self.texts]

    def _turn(self, context: list[int]) -> int:
        h, n = self.header, len(self.header)
        count = sum(1 for i in range(len(context) - n + 1) if context[i] == h[0] and context[i:i + n] == h)
        return count - 1

    def generate(self, contexts, max_new_tokens, stop_strings=()):
        from sod_trainer.rollout.types import GenerationOutput

        outputs = []
        for context, budget in zip(contexts, max_new_tokens):
            ids = self.ids[min(self._turn(context), self.turns)]
            outputs.append(GenerationOutput(ids[:budget], "eos" if len(ids) <= budget else "length"))
        return outputs


class ForcedScript:
    """A ``LogitsProcessor`` that makes every row sample the next token of its script.

    Row identity comes from ``Problem <n>`` in its prompt; the turn index from the number of assistant
    headers in its context; the position from the tokens generated since this ``generate`` call began.
    """

    def __init__(self, tok, scripts: dict[int, list[list[int]]]):
        self.tok = tok
        self.scripts = scripts
        self.header = tok.encode("<|im_start|>assistant", add_special_tokens=False)
        self.start = None
        self.table = None
        self.batch = None

    def _begin(self, input_ids: torch.Tensor):
        rows = []
        for ids in input_ids.tolist():
            text = self.tok.decode(ids)
            problem = int(re.search(r"Problem (\d+)", text).group(1))
            turn = text.count("<|im_start|>assistant") - 1
            rows.append(self.scripts[problem][turn])
        width = max(len(r) for r in rows)
        self.table = torch.full((len(rows), width + 1), self.tok.eos_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            self.table[i, :len(r)] = torch.tensor(r)
        self.start = input_ids.shape[1]
        self.batch = input_ids.shape[0]
        self.last = input_ids.shape[1]

    def reset(self):
        self.start = None

    def attach(self, model):
        """Reset at the start of every ``model.generate`` call; returns the processor list to pass to it."""
        from transformers import LogitsProcessorList

        original = model.generate

        def generate(*args, **kwargs):
            self.reset()
            return original(*args, **kwargs)

        model.generate = generate
        return LogitsProcessorList([self])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None or input_ids.shape[0] != self.batch or input_ids.shape[1] != self.last + 1:
            self._begin(input_ids)
        else:
            self.last = input_ids.shape[1]
        position = min(input_ids.shape[1] - self.start, self.table.shape[1] - 1)
        forced = self.table[:, position].to(scores.device)
        out = torch.full_like(scores, -float("inf"))
        out.scatter_(1, forced.unsqueeze(1), 0.0)
        return out


def make_scripts(tok, n: int) -> tuple[list[dict], dict[int, list[list[int]]]]:
    rows, scripts = [], {}
    for i in range(n):
        a, b = 100 + 7 * i, 20 + i
        calls = 1 + i % 3
        turns = []
        for k in range(calls):
            code = "print(undefined_name * 2)" if (i + k) % 3 == 2 else f"x = {a} * {b}\nprint(x + {k})"
            turns.append(f"Let me compute step {k + 1}.\n```python\n{code}\n```")
        turns.append(f"The answer is \\boxed{{{a * b}}}.")
        scripts[i] = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in turns]
        rows.append({"prompt": [{"role": "user", "content": f"Problem {i}: what is {a} * {b}?"}]})
    return rows, scripts


def gradients_match(reference, candidate, rows: list[dict[str, Any]],
                    atol: float = 1e-6) -> dict[str, float]:
    """Loss and gradients of one rollout batch, ``reference`` vs ``candidate`` trainer, on the same trajectories.

    The candidate's models must start equal to the reference's. The reference's rollout is replayed for
    the candidate (its backend returns the same token ids), so both losses see identical batches.
    """
    from sod_trainer.rollout.types import GenerationOutput

    recorded: list[list[GenerationOutput]] = []
    backend = reference.rollout_engine.backend
    original = backend.generate

    def record(contexts, budgets, stops=()):
        outputs = original(contexts, budgets, stops)
        recorded.append(outputs)
        return outputs

    class Replay:
        eos_token_ids = getattr(backend, "eos_token_ids", set())

        def generate(self, contexts, budgets, stops=()):
            return recorded.pop(0)

    backend.generate = record
    results = {}
    try:
        grads = []
        for trainer in (reference, candidate):
            if trainer is candidate:
                saved = trainer.rollout_engine.backend
                trainer.rollout_engine.backend = Replay()
            trainer.model.train()
            trainer._step = 0
            trainer._buffered_inputs = None
            inputs = trainer._prepare_inputs(list(rows))
            trainer.model.zero_grad(set_to_none=True)
            loss = trainer.compute_loss(trainer.model, inputs)
            loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
            results[f"loss_{'reference' if trainer is reference else 'candidate'}"] = float(loss)
            trainer.model.zero_grad(set_to_none=True)
            if trainer is candidate:
                trainer.rollout_engine.backend = saved
    finally:
        backend.generate = original
    difference = (grads[0] - grads[1]).abs().max().item()
    results.update(max_abs_grad_difference=difference, grad_norm=float(grads[0].norm()),
                   match=bool(difference <= atol + 1e-4 * grads[0].abs().max().item()))
    return results


# ---------------------------------------------------------------------------------------------- memory-limited children
OOM_MARKERS = ("MemoryError", "can't allocate memory", "not enough memory", "std::bad_alloc", "out of memory")


def run_limited_child(argv: list[str], limit_gib: float | None, timeout: float = 1800, tag: str = "RESULT ") -> dict:
    """Run ``argv`` (a benchmark child) with its address space capped at ``limit_gib`` (``RLIMIT_AS``; None: no
    cap, as CUDA needs: it maps far more address space than it uses).

    Returns the JSON after the last line starting with ``tag``, or ``{"oom": True, ...}`` when the child ran
    out of the allowed memory (an allocation failure, or killed by a signal), or ``{"error": ...}``. The cap
    keeps a measurement from taking the shared machine down; it counts virtual memory, so it sits above
    the resident peak being measured (torch reserves a few hundred MiB of address space it never touches).
    """
    import subprocess

    def cap():
        limit = int(limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=None if limit_gib is None else cap)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(tag)]
    if lines and done.returncode == 0:
        return json.loads(lines[-1][len(tag):])
    tail = done.stderr[-1500:]
    if done.returncode < 0 or any(marker in done.stderr for marker in OOM_MARKERS):
        return {"oom": True, "limit_gib": limit_gib, "returncode": done.returncode, "stderr_tail": tail[-400:]}
    return {"error": tail, "returncode": done.returncode}
