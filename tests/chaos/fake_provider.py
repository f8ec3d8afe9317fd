"""A scripted OpenAI-compatible provider on loopback, for fault scenarios against the real
``openai_compatible`` adapter.

A ``ThreadingHTTPServer`` in the test process, bound to 127.0.0.1 on a free port. Its behaviour is
one ``Phase`` at a time, switched by the test:

    ok            200, a streamed chat/completion (SSE chunks, a usage chunk, ``[DONE]``)
    rate_limited  429 with ``Retry-After: <retry_after_s>`` and an OpenAI error body
    server_error  500 with an OpenAI error body
    hang          accepts the request and answers nothing until the phase changes (bounded by
                  ``HANG_LIMIT_S``), then drops the connection
    echo_key_400  400 whose error message repeats the Authorization header it got (a provider
                  that leaks the caller's key back): the plane must redact it everywhere
    echo_key_500  the same as a 500

Every request is counted by phase, and whether it carried the expected bearer key, so a test can
prove the adapter sent the key from the environment and nothing else.
"""

from __future__ import annotations

import enum
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG_LIMIT_S = 30.0
WORDS = ("bonjour", "from", "the", "fake", "provider")


class Phase(str, enum.Enum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    HANG = "hang"
    ECHO_KEY_400 = "echo_key_400"
    ECHO_KEY_500 = "echo_key_500"


class FakeProvider:
    def __init__(self, api_key: str, *, retry_after_s: int = 2) -> None:
        self.api_key = api_key
        self.retry_after_s = retry_after_s
        self._phase = Phase.OK
        self._changed = threading.Condition()
        self.requests: Counter[str] = Counter()
        self.bad_auth = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-provider", daemon=True)

    # -- control -----------------------------------------------------------------------------
    def start(self) -> FakeProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.set_phase(Phase.OK)  # releases hanging handlers
        self.server.shutdown()
        self.server.server_close()

    @property
    def phase(self) -> Phase:
        return self._phase

    def set_phase(self, phase: Phase) -> None:
        with self._changed:
            self._phase = phase
            self._changed.notify_all()

    def _wait_while(self, phase: Phase, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        with self._changed:
            while self._phase is phase and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())

    # -- the HTTP side -------------------------------------------------------------------------
    def _handler_class(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # keep the test output clean
                return

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                phase = provider.phase
                provider.requests[phase.value] += 1
                if self.headers.get("authorization") != f"Bearer {provider.api_key}":
                    provider.bad_auth += 1
                    return self._json(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                if phase is Phase.RATE_LIMITED:
                    return self._json(429, {"error": {"message": "rate limit reached", "type": "rate_limit"}},
                                      {"Retry-After": str(provider.retry_after_s)})
                if phase is Phase.SERVER_ERROR:
                    return self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
                if phase in (Phase.ECHO_KEY_400, Phase.ECHO_KEY_500):
                    leak = f"invalid request from {self.headers.get('authorization')}"
                    return self._json(400 if phase is Phase.ECHO_KEY_400 else 500,
                                      {"error": {"message": leak, "type": "invalid_request_error"}})
                if phase is Phase.HANG:
                    provider._wait_while(Phase.HANG, HANG_LIMIT_S)
                    self.close_connection = True
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self._json(400, {"error": {"message": "not JSON", "type": "invalid_request_error"}})
                self._stream(body, chat=self.path.endswith("/chat/completions"))

            def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict, *, chat: bool) -> None:
                n = max(1, min(int(body.get("max_tokens") or 4), 16))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("x-ratelimit-remaining-requests", "1000")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                for i in range(n):
                    word = WORDS[i % len(WORDS)] + " "
                    choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
                    self._event({"id": "fake", "choices": [dict(choice, finish_reason=None)]})
                last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
                self._event({"id": "fake", "choices": [dict(last, finish_reason="length")]})
                self._event({"id": "fake", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _event(self, obj: dict) -> None:
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())

        return Handler
