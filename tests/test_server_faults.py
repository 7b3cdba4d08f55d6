"""A served teacher and a vLLM generation server survive hiccups (503, dropped connections, hung requests) with
bounded, counted retries; a server that stays down makes the trainer save a checkpoint and stop, and the run
resumes from it (issue 16, item 1)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from conftest import make_tiny_model
from fake_server import LOGPROB, FakeVLLMServer
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.rewards import completion_text
from sod_trainer.retry import RetryPolicy, ServerUnavailableError, call_with_retries
from sod_trainer.teacher_server import ServerTeacher, TeacherServerError, TeacherServerUnavailableError

FAST = RetryPolicy(max_retries=3, backoff=0.01, max_backoff=0.05)


def _score(teacher, tokenizer):
    ids = torch.tensor([tokenizer.encode("what is 2 + 2? the answer is 4", add_special_tokens=False)])
    width = ids.shape[1] - 3
    return teacher.score(ids, torch.ones_like(ids), torch.tensor([3]), torch.ones(1, width, dtype=torch.long))


def test_requests_is_a_declared_dependency():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert any(dep.split(">")[0].split("<")[0].strip() == "requests" for dep in pyproject["project"]["dependencies"])


def test_teacher_retries_a_503_a_dropped_connection_and_a_hung_request(tokenizer):
    with FakeVLLMServer(tokenizer) as server:
        teacher = ServerTeacher(server.url, tokenizer, timeout=0.5, retry=FAST)  # start-up checks pass
        assert teacher.retries.pop() == 0
        server.faults.extend(["503", "drop", "hang"])
        answered = server.completions
        start = time.monotonic()
        logps = _score(teacher, tokenizer)
        assert time.monotonic() - start < 5
        assert torch.allclose(logps, torch.full_like(logps, LOGPROB))
        assert teacher.retries.pop() == 3 and server.completions - answered == 1


def test_teacher_gives_up_after_the_last_retry_in_bounded_time(tokenizer):
    with FakeVLLMServer(tokenizer) as server:
        teacher = ServerTeacher(server.url, tokenizer, timeout=0.5, retry=RetryPolicy(2, 0.01, 0.05))
        server.down = True
        before = server.requests
        start = time.monotonic()
        with pytest.raises(TeacherServerUnavailableError, match="failed 3 times.*vllm serve"):
            _score(teacher, tokenizer)
        assert server.requests - before == 3 and time.monotonic() - start < 5
        server.down = False
        server.faults.extend(["hang"] * 3)  # hung every time: three timeouts, then the same error
        with pytest.raises(TeacherServerUnavailableError, match="Timeout"):
            _score(teacher, tokenizer)


def test_a_client_error_is_not_retried(tokenizer):
    with FakeVLLMServer(tokenizer) as server:
        teacher = ServerTeacher(server.url, tokenizer, retry=FAST)
        server.faults.append("400")
        before = server.requests
        with pytest.raises(TeacherServerError, match="HTTP 400") as caught:
            _score(teacher, tokenizer)
        assert not isinstance(caught.value, ServerUnavailableError) and server.requests - before == 1


def test_back_off_doubles_up_to_the_cap():
    waits, calls = [], []

    def failing():
        calls.append(1)
        raise ConnectionError("refused")

    with pytest.raises(ServerUnavailableError) as caught:
        call_with_retries(failing, RetryPolicy(max_retries=5, backoff=1.0, max_backoff=6.0), server="test server",
                          url="http://x", sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0, 6.0, 6.0] and len(calls) == 6 and caught.value.attempts == 6


def test_generation_server_errors_are_retried_then_stop(tokenizer):
    """Server-mode generation (TRL's VLLMClient raises ``Exception('Request failed: 503, ...')``)."""
    from sod_trainer.rollout.vllm import VLLMBackend

    class Client:
        base_url = "http://gen:8000"

        def __init__(self, failures):
            self.failures = failures

        def generate(self, prompts, **kwargs):
            if self.failures:
                raise self.failures.pop(0)
            return {"completion_ids": [[5, 6] for _ in prompts]}

    import requests

    class Generation:
        mode = "server"

        def __init__(self, failures):
            self.vllm_client = Client(failures)

    backend = VLLMBackend(Generation([Exception("Request failed: 503, busy"), requests.ConnectionError("reset")]),
                          tokenizer, retry=FAST)
    outputs = backend._generate_server([[1, 2, 3]], [4], ())
    assert outputs[0].token_ids[:2] == [5, 6] and backend.retries.pop() == 2
    down = VLLMBackend(Generation([Exception("Request failed: 502, down")] * 4), tokenizer, retry=FAST)
    with pytest.raises(ServerUnavailableError, match="vLLM generation server at http://gen:8000"):
        down._generate_server([[1, 2, 3]], [4], ())


ROWS = [{"prompt": [{"role": "user", "content": f"q{i}: what is {i} * 3?"}], "answer": str(3 * i)} for i in range(4)]


def _reward(prompts, completions, answer, **kwargs):
    return [1.0 if a in completion_text(c) else -1.0 for c, a in zip(completions, answer)]


def _trainer(tokenizer, output_dir, url, **overrides):
    config = dict(output_dir=str(output_dir), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=16, max_tool_calling_iterations=1, max_steps=3, learning_rate=1e-2,
                  report_to=[], use_cpu=True, save_strategy="no", seed=3, logging_steps=1,
                  teacher_server_url=url, server_max_retries=2, server_retry_backoff=0.01, teacher_server_timeout=2.0)
    config.update(overrides)
    return SODTrainer(model=make_tiny_model(tokenizer, seed=0), args=SODConfig(**config),
                      train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer, reward_funcs=[_reward])


def test_teacher_server_down_saves_a_checkpoint_stops_and_resumes(tokenizer, tmp_path):
    with FakeVLLMServer(tokenizer) as server:
        trainer = _trainer(tokenizer, tmp_path, server.url)

        class TakeServerDown(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                server.faults.append("503")  # one hiccup, retried and counted ...
                if state.global_step == 2:
                    server.down = True  # ... then down for good before step 3 is scored

        trainer.add_callback(TakeServerDown())
        with pytest.raises(ServerUnavailableError, match="resume_from_checkpoint=True") as caught:
            trainer.train()
        assert "checkpoint-2" in str(caught.value) and trainer.state.global_step == 2
        assert os.path.isfile(tmp_path / "checkpoint-2" / "optimizer.pt")
        assert [entry.get("server/teacher_retries") for entry in trainer.state.log_history[:2]] == [0.0, 1.0]
        server.down = False
        resumed = _trainer(tokenizer, tmp_path, server.url)
        resumed.train(resume_from_checkpoint=True)
        assert resumed.state.global_step == 3


def test_generation_server_down_saves_a_checkpoint_and_stops(tokenizer, tmp_path):
    """vLLM server-mode generation that stays down: the same checkpoint-and-stop as for the teacher."""
    import requests

    from scripted import ScriptedBackend
    from test_reliability import build

    class GoesDown(ScriptedBackend):
        retries = None

        def generate(self, contexts, max_new_tokens, stop_strings=()):
            if trainer.state.global_step >= 1:  # the server went away after the first step
                def refused():
                    raise requests.ConnectionError("Connection refused")

                call_with_retries(refused, FAST, server="vLLM generation server", url="http://gen:8000")
            return super().generate(contexts, max_new_tokens, stop_strings)

    trainer = build(tokenizer, tmp_path, max_steps=3)
    trainer.rollout_engine.backend = GoesDown(tokenizer, {"q": ["\\boxed{7}"]})
    with pytest.raises(ServerUnavailableError, match=r"vLLM generation server at http://gen:8000.*failed 4 times"
                                                     r"(.|\n)*checkpoint-1(.|\n)*resume_from_checkpoint=True"):
        trainer.train()
    assert trainer.state.global_step == 1 and os.path.isfile(tmp_path / "checkpoint-1" / "optimizer.pt")
