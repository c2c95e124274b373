"""A local stand-in for the Anthropic Messages API (POST /v1/messages) and its Message Batches API, with a
deterministic fault schedule.

Its "edit" fixes the typo "teh" -> "the" in the text inside <response> tags and answers with
<edited_response> tags, so results are checkable. Faults are scheduled per item by a marker in the text:
``[[faults:429,500,529,slow,malformed]]`` makes the item's 1st, 2nd, ... attempt fail that way and the
next one succeed; ``[[always-malformed]]`` never answers with tags; ``[[rewrite]]`` replaces the whole
text (a too-large edit); ``[[empty]]`` returns an empty edit. Every request is logged per item (the
response text), so tests can count what was sent, when, and what it got. ``400`` answers an invalid request.

Message Batches: POST /v1/messages/batches creates a batch (``batches`` keeps each one's requests), GET
/v1/messages/batches/{id} answers ``in_progress`` for the first ``batch_polls`` retrieves of that batch and
then ``ended``, and GET its ``results_url`` streams the results as JSONL, in reverse order (clients must join by
custom_id). Each item's outcome is decided when its batch ends, by the same schedule: 429/500/529/400 become
``errored`` results with the matching error type, and the batch-only outcomes ``expired`` and ``canceled``
(ignored by POST /v1/messages) become results of that type, e.g. ``[[faults:expired,500]]``.

Judge mode (a prompt with <output_a>/<output_b> tags, as fgrlhf.evaluation.judges sends, directly or in a batch): it
answers "Output (a)" or "Output (b)", preferring the output with more words (a on a tie), or always (a) when either
output holds ``[[position-bias]]``; the item is the pair in the order shown, and fault markers in either output
apply.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RESPONSE = re.compile(r"<response>\n(.*)\n</response>", re.DOTALL)
_FAULTS = re.compile(r"\[\[faults:([a-z0-9,]+)\]\]")
_JUDGE = re.compile(r"<output_a>\n(.*)\n</output_a>.*<output_b>\n(.*)\n</output_b>", re.DOTALL)
_BATCH_PATH = re.compile(r"/v1/messages/batches/([A-Za-z0-9_]+)(/results)?")
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# Outcome -> (HTTP status, error type) of a failed request; in a batch, the type of an errored result.
_ERRORS = {
    "429": (429, "rate_limit_error"),
    "500": (500, "api_error"),
    "529": (529, "overloaded_error"),
    "400": (400, "invalid_request_error"),
}
_TIME = "2026-01-01T00:00:00Z"


def item_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Logged:
    key: str
    started: float
    outcome: str  # "ok", "429", "500", "529", "400", "slow", "malformed", "expired", "canceled", "401"


@dataclass
class FakeBatch:
    id: str
    requests: list[dict]
    polls: int = 0
    results: list[dict] | None = None  # set when processing ends

    @property
    def custom_ids(self) -> list[str]:
        return [request["custom_id"] for request in self.requests]


def _item_text(prompt: str) -> tuple[str, re.Match | None]:
    """The item a prompt is about (the edited response, or the judged pair) and the judge match."""
    match, judged = _RESPONSE.search(prompt), _JUDGE.search(prompt)
    return (match.group(1) if match else ("\n".join(judged.groups()) if judged else "")), judged


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 drops connections under a burst of concurrent clients, which then
    # reconnect a second later and look like time-outs.
    request_queue_size = 256


class FakeMessagesServer:
    def __init__(
        self,
        api_key: str,
        latency_s: float = 0.0,
        retry_after_s: float = 1.0,
        slow_s: float = 2.0,
        batch_polls: int = 1,
    ):
        self.api_key = api_key
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.batch_polls = batch_polls
        self.log: list[Logged] = []
        self.batches: dict[str, FakeBatch] = {}
        self._lock = threading.RLock()
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

    def _create_batch(self, body: dict) -> tuple[int, dict]:
        requests = body.get("requests") or []
        custom_ids = [request.get("custom_id", "") for request in requests]
        if (
            not requests
            or len(requests) > 100_000
            or len(set(custom_ids)) != len(custom_ids)
            or not all(_CUSTOM_ID.fullmatch(custom_id) for custom_id in custom_ids)
        ):
            return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad requests"}}
        with self._lock:
            batch = FakeBatch(f"msgbatch_fake{len(self.batches) + 1:04d}", requests)
            self.batches[batch.id] = batch
        return 200, self._batch_json(batch)

    def _retrieve_batch(self, batch: FakeBatch) -> dict:
        with self._lock:
            batch.polls += 1
            if batch.results is None and batch.polls > self.batch_polls:
                batch.results = [self._batch_result(request) for request in batch.requests]
            return self._batch_json(batch)

    def _batch_result(self, request: dict) -> dict:
        params = request["params"]
        prompt = params["messages"][0]["content"]
        text, judged = _item_text(prompt)
        outcome = self._decide(text)
        self._record(text, time.monotonic(), outcome)
        if outcome in ("expired", "canceled"):
            result = {"type": outcome}
        elif outcome in _ERRORS:
            kind = _ERRORS[outcome][1]
            result = {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": kind}}}
        else:
            result = {"type": "succeeded", "message": self._message(params["model"], prompt, text, outcome, judged)}
        return {"custom_id": request["custom_id"], "result": result}

    def _batch_json(self, batch: FakeBatch) -> dict:
        ended = batch.results is not None
        counts = Counter(line["result"]["type"] for line in batch.results or [])
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": counts["succeeded"],
                "errored": counts["errored"],
                "canceled": counts["canceled"],
                "expired": counts["expired"],
            },
            "created_at": _TIME,
            "expires_at": _TIME,
            "ended_at": _TIME if ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

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

            def _authorized(self) -> bool:
                # SDK versions differ in how they send the key: x-api-key or a bearer token.
                keys = {self.headers.get("x-api-key"), self.headers.get("authorization", "").removeprefix("Bearer ")}
                return server.api_key in keys

            def do_GET(self) -> None:
                if not self._authorized():
                    self._error(401, "authentication_error")
                    return
                match = _BATCH_PATH.fullmatch(self.path)
                batch = server.batches.get(match.group(1)) if match else None
                if batch is None:
                    self._error(404, "not_found_error")
                elif not match.group(2):
                    self._send(200, server._retrieve_batch(batch))
                elif batch.results is None:
                    self._error(400, "invalid_request_error")  # results before the batch ended
                else:
                    data = "".join(json.dumps(line) + "\n" for line in reversed(batch.results)).encode("utf-8")
                    self.send_response(200)
                    self.send_header("content-type", "application/binary")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def do_POST(self) -> None:
                started = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path == "/v1/messages/batches":
                    if self._authorized():
                        self._send(*server._create_batch(body))
                    else:
                        self._error(401, "authentication_error")
                    return
                prompt = body["messages"][0]["content"]
                text, judged = _item_text(prompt)
                if self.path != "/v1/messages" or not self._authorized():
                    server._record(text, started, "401")
                    self._error(401, "authentication_error")
                    return
                outcome = server._decide(text)
                server._record(text, started, outcome)
                if outcome in _ERRORS:
                    status, kind = _ERRORS[outcome]
                    retry_after = {"retry-after": f"{server.retry_after_s:g}"} if status == 429 else None
                    self._error(status, kind, retry_after)
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
