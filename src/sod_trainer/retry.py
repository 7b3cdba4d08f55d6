"""Bounded retries with exponential back-off for the HTTP servers a run depends on (served teacher, vLLM
generation server).

A request that fails with a connection error (refused, reset, dropped mid-answer), a timeout (a hung server)
or an HTTP 5xx is retried after ``backoff``, ``2 * backoff``, ``4 * backoff``, ... seconds (capped at
``max_backoff``), at most ``max_retries`` times, as TRL's ``VLLMClient`` does for generation. Each retry is
logged and counted; past the last one :class:`ServerUnavailableError` says which server, how often it was
tried and why it failed. The trainer turns that error into a checkpoint and a stop (see
:meth:`sod_trainer.SODTrainer.train`). Other errors (HTTP 4xx, a bad answer) are not retried.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

__all__ = ["RetryPolicy", "RetryCounter", "ServerUnavailableError", "TransientServerError", "call_with_retries",
           "is_transient"]

T = TypeVar("T")


class ServerUnavailableError(RuntimeError):
    """A server stayed unreachable (connection errors, timeouts or HTTP 5xx) past the last retry."""

    def __init__(self, message: str, *, server: str = "server", url: str = "", attempts: int = 0):
        super().__init__(message)
        self.server = server
        self.url = url
        self.attempts = attempts


class TransientServerError(RuntimeError):
    """An answer worth retrying (HTTP 5xx), raised by a request function for :func:`call_with_retries`."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``max_retries`` retries after the first attempt, waiting
    ``backoff * 2**i`` seconds (at most ``max_backoff``) before retry ``i``."""

    max_retries: int = 5
    backoff: float = 2.0
    max_backoff: float = 60.0

    def __post_init__(self):
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries}: use 0 (no retry) or more.")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"backoff={self.backoff}, max_backoff={self.max_backoff}: waits cannot be negative.")

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        return min(self.max_backoff, self.backoff * (2 ** retry))


class RetryCounter:
    """A thread-safe count of retries, read and reset once per rollout batch for the metrics."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int = 1) -> None:
        """Count ``n`` more retries."""
        with self._lock:
            self._count += n

    def pop(self) -> int:
        """The retries since the last ``pop``."""
        with self._lock:
            count, self._count = self._count, 0
            return count


_STATUS = re.compile(r"\b(5\d\d)\b")


def is_transient(error: BaseException) -> bool:
    """Connection errors, timeouts and HTTP 5xx (also TRL ``VLLMClient``'s ``Exception("Request failed: 503, ...")``)."""
    if isinstance(error, (TransientServerError, ConnectionError, TimeoutError)):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover - a declared dependency
        requests = None
    if requests is not None and isinstance(error, (requests.ConnectionError, requests.Timeout,
                                                   requests.exceptions.ChunkedEncodingError,
                                                   requests.exceptions.RetryError)):
        return True
    text = str(error)
    return type(error) is Exception and text.startswith("Request failed:") and bool(_STATUS.search(text[:40]))


def call_with_retries(function: Callable[[], T], policy: RetryPolicy, *, server: str, url: str,
                      counter: RetryCounter | None = None, what: str = "request",
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """``function()``, retried on :func:`is_transient` errors per ``policy``; :class:`ServerUnavailableError`
    after the last retry. ``server`` names the server in messages ("teacher server"), ``url`` is its address."""
    for attempt in range(policy.max_retries + 1):
        try:
            return function()
        except Exception as error:  # noqa: BLE001 - sorted by is_transient below
            if not is_transient(error):
                raise
            if attempt == policy.max_retries:
                raise ServerUnavailableError(
                    f"The {server} at {url} is unavailable: {what} failed {attempt + 1} times "
                    f"(last: {type(error).__name__}: {str(error)[:300]}). Retries are set by server_max_retries="
                    f"{policy.max_retries} and server_retry_backoff={policy.backoff}.",
                    server=server, url=url, attempts=attempt + 1,
                ) from error
            wait = policy.wait(attempt)
            if counter is not None:
                counter.add()
            logger.warning("%s at %s: %s failed (%s: %s); retry %d of %d in %.1f s.", server, url, what,
                           type(error).__name__, str(error)[:200], attempt + 1, policy.max_retries, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
