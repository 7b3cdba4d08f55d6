"""A teacher served by vLLM's OpenAI-compatible server: log-probs of the student's tokens over HTTP.

SOD needs only ``log π_T(y_t | y_<t)`` of the tokens the student sampled (SOD_SPEC §3), which is what
vLLM's ``prompt_logprobs`` returns for a prompt given as token ids. So the teacher (a 4B or 14B
model) can live on its own GPUs behind ``vllm serve TEACHER`` and the trainer sends
``prompt + completion`` ids of each trajectory to ``/v1/completions`` with ``prompt_logprobs=0``
and ``max_tokens=1``. Rows are batched into requests of ``batch_size`` sequences, ``max_concurrent``
requests in flight.

Checked when the scorer is built, with errors that say what to do: the server answers, it serves the
requested model name, it accepts the tokenizer's largest token id, and it tokenizes a probe text to
the same ids as the trainer's tokenizer (same vocabulary). vLLM computes prompt log-probs from the raw
logits (no temperature), so a served teacher needs ``temperature == 1`` (the paper's setting).

A connection error, a timeout (``timeout`` seconds without an answer) or an HTTP 5xx is retried with
exponential back-off (:mod:`sod_trainer.retry`; ``retry=``), logged and counted (``retries``); past the last
retry :class:`TeacherServerUnavailableError` is raised, which the trainer turns into a checkpoint and a stop.
We do not reuse TRL's ``VLLMClient`` here: it needs vLLM installed on the trainer's machine and does not
report its retries; its ``get_sequence_logprobs`` asks for the same ``prompt_logprobs`` as we do.
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor

import requests
import torch

from .retry import RetryCounter, RetryPolicy, ServerUnavailableError, TransientServerError, call_with_retries

logger = logging.getLogger(__name__)

__all__ = ["ServerTeacher", "TeacherServerError", "TeacherServerUnavailableError"]

_PROBE_TEXT = "Compute 1234 * 56 with the tool.\n```python\nprint(1234 * 56)\n```\nThe answer is \\boxed{69104}."


class TeacherServerError(RuntimeError):
    """The teacher server could not be used: unreachable, wrong model, mismatched vocabulary, bad request."""


class TeacherServerUnavailableError(TeacherServerError, ServerUnavailableError):
    """The teacher server stayed unreachable (connection errors, timeouts, HTTP 5xx) past the last retry."""


class ServerTeacher:
    """``score(...) -> (B, C)`` teacher log-probs, like :class:`~sod_trainer.teacher.LocalTeacher`, from a vLLM server.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
        tokenizer: the trainer's tokenizer; the server must use the same vocabulary.
        temperature: must be 1.0 (vLLM's prompt log-probs are of the untempered distribution).
        model: the served model name; default the server's only (or first) model.
        batch_size: sequences per request. max_concurrent: requests in flight.
        timeout: seconds per HTTP request before it counts as hung (and is retried).
        retry: retries of a failed request (default :class:`~sod_trainer.retry.RetryPolicy`: 5, from 2 s).
        check: run the start-up checks.
    """

    def __init__(self, base_url: str, tokenizer, temperature: float = 1.0, *, model: str | None = None,
                 batch_size: int = 8, max_concurrent: int = 4, timeout: float = 600.0,
                 retry: RetryPolicy | None = None, check: bool = True):
        if temperature != 1.0:
            raise ValueError(
                f"temperature={temperature}: vLLM returns prompt log-probs of the untempered teacher (temperature 1), "
                "so a served teacher cannot score temperature-scaled log-probs. Use temperature=1.0 (the paper's) "
                "or a local teacher (teacher_model=...)."
            )
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.batch_size = max(1, batch_size)
        self.max_concurrent = max(1, max_concurrent)
        self.timeout = timeout
        self.session = requests.Session()
        self.retry = retry or RetryPolicy()
        self.retries = RetryCounter()
        self.model = model
        if check:
            self.check()
        elif self.model is None:
            self.model = self._served_models()[0]

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        try:
            return call_with_retries(lambda: self._request_once(method, path, payload), self.retry,
                                     server="teacher server", url=self.base_url, counter=self.retries,
                                     what=f"{method} {path}")
        except ServerUnavailableError as error:
            raise TeacherServerUnavailableError(
                f"{error} Start the server, e.g. `vllm serve TEACHER_PATH --host 0.0.0.0 --port 8000`, and set "
                "teacher_server_url to its address (http://HOST:PORT).",
                server=error.server, url=error.url, attempts=error.attempts,
            ) from error.__cause__

    def _request_once(self, method: str, path: str, payload: dict | None) -> dict:
        url = f"{self.base_url}{path}"
        response = self.session.request(method, url, json=payload, timeout=self.timeout)
        if response.status_code >= 500:
            raise TransientServerError(f"HTTP {response.status_code} from {path}: {response.text[:200]}")
        if response.status_code != 200:
            try:
                message = response.json().get("error", {}).get("message") or response.text
            except (ValueError, AttributeError):
                message = response.text
            raise TeacherServerError(
                f"The teacher server at {self.base_url} answered {path} with HTTP {response.status_code}: {message}"
            )
        try:
            return response.json()
        except json.JSONDecodeError as error:
            raise TeacherServerError(f"The teacher server at {url} did not answer with JSON: "
                                     f"{response.text[:200]!r}") from error

    def _served_models(self) -> list[str]:
        data = self._request("GET", "/v1/models").get("data") or []
        models = [entry["id"] for entry in data if "id" in entry]
        if not models:
            raise TeacherServerError(f"The teacher server at {self.base_url} lists no model at /v1/models.")
        return models

    # ------------------------------------------------------------------ start-up checks
    def check(self) -> None:
        """Reachable, serves ``model``, accepts the tokenizer's ids, tokenizes like the trainer's tokenizer."""
        models = self._served_models()
        if self.model is None:
            self.model = models[0]
        elif self.model not in models:
            raise TeacherServerError(
                f"The teacher server at {self.base_url} serves {models}, not {self.model!r}. Pass one of those "
                "names, or start the server with `--served-model-name " + str(self.model) + "`."
            )
        largest = len(self.tokenizer) - 1
        try:
            self._prompt_logprobs([[0, largest]])
        except TeacherServerUnavailableError:
            raise
        except TeacherServerError as error:
            raise TeacherServerError(
                f"The teacher server rejected token id {largest}, the largest id of the trainer's tokenizer "
                f"({len(self.tokenizer)} tokens): {error}. The teacher must share the student's tokenizer."
            ) from error
        local = self.tokenizer.encode(_PROBE_TEXT, add_special_tokens=False)
        try:
            served = self._request("POST", "/tokenize", {"model": self.model, "prompt": _PROBE_TEXT,
                                                        "add_special_tokens": False})["tokens"]
        except TeacherServerUnavailableError:
            raise
        except (TeacherServerError, KeyError) as error:
            logger.warning("Could not compare tokenizers with the teacher server (%s); assuming they match.", error)
            return
        if list(served) != list(local):
            raise TeacherServerError(
                f"The teacher server's tokenizer differs from the trainer's: {_PROBE_TEXT!r} is {served[:12]}... "
                f"there and {local[:12]}... here. SOD scores the student's token ids with the teacher, so both must "
                "use one tokenizer (serve a teacher of the student's model family)."
            )

    # ------------------------------------------------------------------ scoring
    def _prompt_logprobs(self, sequences: list[list[int]]) -> list[list[dict | None]]:
        payload = {"model": self.model, "prompt": sequences, "max_tokens": 1, "prompt_logprobs": 0,
                   "temperature": 1.0}
        choices = self._request("POST", "/v1/completions", payload).get("choices") or []
        if len(choices) != len(sequences):
            raise TeacherServerError(f"The teacher server returned {len(choices)} choices for {len(sequences)} prompts.")
        choices = sorted(choices, key=lambda choice: choice.get("index", 0))
        result = []
        for choice, sequence in zip(choices, sequences):
            values = choice.get("prompt_logprobs")
            if values is None or len(values) != len(sequence):
                raise TeacherServerError(
                    "The teacher server returned no prompt log-probs (or the wrong number). It must be a vLLM "
                    "OpenAI-compatible server that supports `prompt_logprobs` (vLLM >= 0.6)."
                )
            result.append(values)
        return result

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_start: torch.Tensor,
              token_mask: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` float32 teacher log-probs of the completion tokens; 0 where ``token_mask`` is unset.

        Row b is right-padded ``prompt + completion``; its completion starts at ``completion_start[b]``.
        """
        batch, width = token_mask.shape
        lengths = attention_mask.sum(1).tolist()
        starts = completion_start.tolist()
        ids = input_ids.tolist()
        mask = token_mask.bool().cpu()
        rows = [b for b in range(batch) if mask[b].any()]
        sequences = [ids[b][: int(lengths[b])] for b in rows]
        chunks = [list(range(i, min(i + self.batch_size, len(rows)))) for i in range(0, len(rows), self.batch_size)]

        def send(chunk: list[int]):
            return chunk, self._prompt_logprobs([sequences[i] for i in chunk])

        output = torch.zeros(batch, width, dtype=torch.float32)
        if chunks:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrent, len(chunks))) as pool:
                for chunk, results in pool.map(send, chunks):
                    for local_index, logprobs in zip(chunk, results):
                        b = rows[local_index]
                        sequence = sequences[local_index]
                        for j in mask[b].nonzero(as_tuple=True)[0].tolist():
                            position = int(starts[b]) + j
                            if position <= 0 or position >= len(sequence):
                                raise TeacherServerError(
                                    f"Row {b}: completion token {j} is outside the sequence of {len(sequence)} "
                                    "tokens; token_mask and attention_mask disagree.")
                            entry = (logprobs[position] or {}).get(str(sequence[position]))
                            if entry is None:
                                raise TeacherServerError(
                                    f"The teacher server gave no log-prob for token {sequence[position]} at position "
                                    f"{position} of row {b}.")
                            value = entry["logprob"]
                            output[b, j] = -math.inf if value is None or math.isnan(value) else float(value)
        return output.to(input_ids.device)

    def close(self) -> None:
        self.session.close()
