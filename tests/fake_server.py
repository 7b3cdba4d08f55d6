"""A fake vLLM OpenAI-compatible server on 127.0.0.1 that can answer 503, drop connections and hang.

``FakeVLLMServer(tokenizer)``: ``/v1/models``, ``/tokenize`` and ``/v1/completions`` with ``prompt_logprobs``
(every token gets log-prob ``LOGPROB``). ``faults`` is a queue of behaviours for the next requests
(``"503"``, ``"400"``, ``"drop"``, ``"hang"``); ``down = True`` answers 503 to everything.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOGPROB = -0.5


class FakeVLLMServer:
    """Start with ``with FakeVLLMServer(tok) as server:``; ``server.url``, ``server.requests`` (count)."""

    def __init__(self, tokenizer, model: str = "teacher", hang_s: float = 3.0):
        self.tokenizer = tokenizer
        self.model = model
        self.hang_s = hang_s
        self.faults: deque[str] = deque()
        self.down = False
        self.requests = 0
        self.completions = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.down:
                return "503"
            return self.faults.popleft() if self.faults else None

    def _answer(self, path: str, payload: dict) -> dict:
        if path == "/v1/models":
            return {"data": [{"id": self.model}]}
        if path == "/tokenize":
            return {"tokens": self.tokenizer.encode(payload["prompt"], add_special_tokens=False)}
        if path == "/v1/completions":
            with self._lock:
                self.completions += 1
            choices = []
            for index, sequence in enumerate(payload["prompt"]):
                logprobs = [None] + [{str(t): {"logprob": LOGPROB, "rank": 1}} for t in sequence[1:]]
                choices.append({"index": index, "text": "", "prompt_logprobs": logprobs})
            return {"choices": choices}
        raise KeyError(path)

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, payload: dict) -> None:
                fault = owner._next_fault()
                if fault == "503":
                    return self._reply(503, {"error": {"message": "overloaded"}})
                if fault == "400":
                    return self._reply(400, {"error": {"message": "bad request"}})
                if fault == "drop":  # read the request, then close the socket without an answer
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if fault == "hang":
                    owner._stop.wait(owner.hang_s)
                    self.close_connection = True
                    return None
                try:
                    return self._reply(200, owner._answer(self.path, payload))
                except KeyError:
                    return self._reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self):
                self._serve({})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self._serve(json.loads(self.rfile.read(length) or b"{}"))

        return Handler
