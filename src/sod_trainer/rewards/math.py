"""Math reward: math-verify equivalence in a helper process with a deadline, and MathReward."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from .answers import ANSWER_WINDOW_CHARS, _reference_text, last_boxed, normalize_final_answer, reference_text
from .base import AnswerCheck, RewardFunction

# Runs in the helper process: stdlib + math_verify only, no import of sod_trainer (so nothing heavy
# is loaded and the main script is never re-imported, unlike multiprocessing's spawn).
_WORKER_SOURCE = r'''
import json, os, sys
protocol = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # anything printed by sympy goes to stderr, never into the protocol
sys.stdout = sys.stderr
import logging
logging.getLogger("math_verify").setLevel(logging.ERROR)
from math_verify import LatexExtractionConfig, parse, verify
from math_verify.parser import NormalizationConfig
PRED_CONFIG = [LatexExtractionConfig(
    normalization_config=NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True,
                                             boxed="all", units=True),
    boxed_match_priority=0, try_extract_without_anchor=False)]
gold_cache = {}
protocol.write("ready\n")
for line in sys.stdin:
    request = json.loads(line)
    try:
        gold = gold_cache.get(request["gold"])
        if gold is None:
            gold = parse("\\boxed{" + request["gold"] + "}", parsing_timeout=None)
            if len(gold_cache) < 10000:
                gold_cache[request["gold"]] = gold
        pred = parse("\\boxed{" + request["pred"] + "}", extraction_config=PRED_CONFIG, parsing_timeout=None)
        ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
        reply = {"ok": ok, "gold_parsed": bool(gold)}
    except BaseException as error:  # noqa: BLE001 - any failure is "not verified"
        reply = {"ok": False, "gold_parsed": False, "error": repr(error)[:200]}
    protocol.write(json.dumps(reply) + "\n")
'''


class MathVerifier:
    """Checks ``pred`` against ``gold`` with math-verify, each comparison under a deadline.

    math-verify runs in one long-lived helper process (started on first use, ~0.5 s); a comparison
    that passes ``timeout_s`` kills it (counted as not equivalent) and the next call starts a fresh
    one. Thread-safe. ``timeout_s=None`` runs math-verify in this process with no deadline at all.
    """

    def __init__(self, timeout_s: float | None = 10.0):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._buffer = b""
        self.timeouts = 0
        self._timed_out = False
        self._finalizer: weakref.finalize | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (TRL may send reward functions to a spawned worker): the helper process stays here.
        return {"timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["timeout_s"])

    def equivalent(self, gold: str, pred: str) -> bool:
        """Whether the answer ``pred`` (a box's content) is mathematically equal to ``gold``."""
        if self.timeout_s is None:
            return _verify_inline(gold, pred)
        request = (json.dumps({"gold": gold, "pred": pred}) + "\n").encode()
        with self._lock:
            for attempt in range(2):  # a helper that died on its own (not a timeout) is restarted once
                process = self._ensure_started()
                try:
                    process.stdin.write(request)
                    process.stdin.flush()
                    line = self._read_line(process, self.timeout_s)
                except (BrokenPipeError, OSError):
                    line = None
                if line is None:
                    if self._timed_out:
                        self.timeouts += 1
                        self._kill()
                        return False
                    self._kill()
                    continue
                return bool(json.loads(line).get("ok"))
        return False

    def close(self) -> None:
        """Stop the helper process (it is also stopped when this object is garbage collected)."""
        with self._lock:
            self._kill()

    # -- internals --
    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._kill()
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._process = process
        self._buffer = b""
        self._finalizer = weakref.finalize(self, _kill_process, process)
        if self._read_line(process, max(60.0, self.timeout_s or 0)) != b"ready":
            self._kill()
            raise RuntimeError(
                "The math-verify helper process did not start. Check that `math-verify` is installed "
                f"for {sys.executable} (pip install 'math-verify>=0.7')."
            )
        return process

    def _read_line(self, process: subprocess.Popen, timeout_s: float) -> bytes | None:
        import time

        self._timed_out = False
        deadline = time.monotonic() + timeout_s
        fd = process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out = True
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the helper exited
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.strip()

    def _kill(self) -> None:
        if self._process is not None:
            _kill_process(self._process)
            if self._finalizer is not None:
                self._finalizer.detach()
        self._process = None
        self._buffer = b""


def _kill_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, 9)
        except (ProcessLookupError, PermissionError):
            process.kill()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except Exception:  # noqa: BLE001
            pass


def _verify_inline(gold: str, pred: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.parser import NormalizationConfig

    config = [LatexExtractionConfig(
        normalization_config=NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True,
                                                 boxed="all", units=True),
        boxed_match_priority=0, try_extract_without_anchor=False)]
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
    return bool(gold_parsed) and bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


class MathReward(RewardFunction):
    r"""+1 if the last ``\boxed{}`` (in the last 300 characters) equals the ``answer`` column, else -1.

    ``strict=False`` (default): equal means math-verify equivalent (``\frac{1}{2}`` = ``0.5``,
    ``5\text{ cm}`` = ``5``), after a fast exact check on normalized strings. ``strict=True``: the
    paper's exact match after normalization only. Rows whose answer is missing get ``None``.
    """

    __name__ = "math_reward"

    def __init__(
        self,
        *,
        strict: bool = False,
        answer_column: str = "answer",
        answer_window_chars: int | None = ANSWER_WINDOW_CHARS,
        verify_timeout_s: float | None = 10.0,
        **shaping: Any,
    ):
        super().__init__(**shaping)
        self.strict = strict
        self.answer_column = answer_column
        self.answer_window_chars = answer_window_chars
        self.verifier = None if strict else MathVerifier(verify_timeout_s)

    def check(self, completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[AnswerCheck]:
        self._warn_if_column_absent(self.answer_column, rows)
        checks = []
        for text, row in zip(completions, rows):
            reference = reference_text(row.get(self.answer_column), column=self.answer_column, reward=self.__name__)
            if reference is None:
                checks.append(AnswerCheck(None, detail=f"no {self.answer_column!r}"))
                continue
            boxed = last_boxed(text, self.answer_window_chars)
            if boxed is None:
                checks.append(AnswerCheck(False, None, "no complete \\boxed{} at the end"))
                continue
            gold = _reference_text(reference)
            answer = normalize_final_answer(boxed)
            if answer and answer == normalize_final_answer(gold):
                checks.append(AnswerCheck(True, answer, "exact"))
            elif self.strict or not boxed.strip():
                checks.append(AnswerCheck(False, answer, "mismatch"))
            else:
                correct = self.verifier.equivalent(gold, boxed)
                checks.append(AnswerCheck(correct, answer, "math-verify"))
        return checks
