"""A local stand-in for the Anthropic Messages API (POST /v1/messages) with a deterministic fault schedule.

Its "edit" fixes the typo "teh" -> "the" in the text inside <response> tags and answers with
<edited_response> tags, so results are checkable. Faults are scheduled per item by a marker in the text:
``[[faults:429,500,529,slow,malformed]]`` makes the item's 1st, 2nd, ... attempt fail that way and the
next one succeed; ``[[always-malformed]]`` never answers with tags; ``[[rewrite]]`` replaces the whole
text (a too-large edit); ``[[empty]]`` returns an empty edit. Every request is logged per item (the
response text), so tests can count what was sent, when, and what it got.

Judge mode (a prompt with <output_a>/<output_b> tags, as fgrlhf.judges sends): it answers "Output (a)" or
"Output (b)", preferring the output with more words (a on a tie), or always (a) when either output holds
``[[position-bias]]``; the item is the pair in that order, and fault markers in either output apply.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RESPONSE = re.compile(r"<response>\n(.*)\n</response>", re.DOTALL)
_FAULTS = re.compile(r"\[\[faults:([a-z0-9,]+)\]\]")
_JUDGE = re.compile(r"<output_a>\n(.*)\n</output_a>.*<output_b>\n(.*)\n</output_b>", re.DOTALL)


def item_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Logged:
    key: str
    started: float
    outcome: str  # "ok", "429", "500", "529", "slow", "malformed", "401"


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 drops connections under a burst of concurrent clients, which then
    # reconnect a second later and look like time-outs.
    request_queue_size = 256


class FakeMessagesServer:
    def __init__(self, api_key: str, latency_s: float = 0.0, retry_after_s: float = 1.0, slow_s: float = 2.0):
        self.api_key = api_key
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeMessagesServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_for(self, text: str) -> list[Logged]:
        key = item_key(text)
        with self._lock:
            return [entry for entry in self.log if entry.key == key]

    def count(self, outcome: str | None = None) -> int:
        with self._lock:
            return sum(1 for entry in self.log if outcome is None or entry.outcome == outcome)

    def _decide(self, text: str) -> str:
        key = item_key(text)
        with self._lock:
            attempt = sum(1 for entry in self.log if entry.key == key)
        if "[[always-malformed]]" in text:
            return "malformed"
        match = _FAULTS.search(text)
        faults = match.group(1).split(",") if match else []
        return faults[attempt] if attempt < len(faults) else "ok"

    def _record(self, text: str, started: float, outcome: str) -> None:
        with self._lock:
            self.log.append(Logged(item_key(text), started, outcome))

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                return None

            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out test)
                    pass

            def _error(self, status: int, kind: str, headers: dict[str, str] | None = None) -> None:
                self._send(status, {"type": "error", "error": {"type": kind, "message": kind}}, headers)

            def do_POST(self) -> None:
                started = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                prompt = body["messages"][0]["content"]
                match, judged = _RESPONSE.search(prompt), _JUDGE.search(prompt)
                text = match.group(1) if match else ("\n".join(judged.groups()) if judged else "")
                # SDK versions differ in how they send the key: x-api-key or a bearer token.
                keys = {self.headers.get("x-api-key"), self.headers.get("authorization", "").removeprefix("Bearer ")}
                if self.path != "/v1/messages" or server.api_key not in keys:
                    server._record(text, started, "401")
                    self._error(401, "authentication_error")
                    return
                outcome = server._decide(text)
                server._record(text, started, outcome)
                if outcome == "429":
                    self._error(429, "rate_limit_error", {"retry-after": f"{server.retry_after_s:g}"})
                elif outcome == "500":
                    self._error(500, "api_error")
                elif outcome == "529":
                    self._error(529, "overloaded_error")
                else:
                    time.sleep(server.slow_s if outcome == "slow" else server.latency_s)
                    self._send(200, server._message(body["model"], prompt, text, outcome, judged))

        return Handler

    @staticmethod
    def _message(model: str, prompt: str, text: str, outcome: str, judged: re.Match | None = None) -> dict:
        if judged is not None:
            a, b = judged.groups()
            better = "a" if "[[position-bias]]" in text or len(a.split()) >= len(b.split()) else "b"
            reply = "I cannot decide." if outcome == "malformed" else f"Output ({better})"
        elif outcome == "malformed":
            reply = "Here is my edit: " + text
        elif "[[rewrite]]" in text:
            reply = "<edited_response>Something else entirely, written from scratch.</edited_response>"
        elif "[[empty]]" in text:
            reply = "<edited_response></edited_response>"
        else:
            reply = f"<edited_response>\n{text.replace('teh', 'the')}\n</edited_response>"
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": len(prompt.split()), "output_tokens": len(reply.split())},
        }
