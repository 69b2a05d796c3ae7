"""The LLM labeller against a real HTTP server on loopback speaking chat completions.

Each fake latent's examples carry a marker word (``zqmark<N>``); the server finds it in
the request and plays that latent's script of canned replies, one per request.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.examples import Example, LatentExamples, QuantileBin
from sae_lens_crosscoder.labelling.llm import LLMLabeller, LLMSettings, RateLimiter
from sae_lens_crosscoder.labelling.prompts import AnswerError, PromptSettings, build_messages, parse_answer, render_example
from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy


def answer(*labels: tuple[str, float], explanation: str = "canned") -> str:
    return json.dumps({"labels": [{"category": c, "confidence": p} for c, p in labels], "explanation": explanation})


class ChatServer:
    """Scripts: marker -> list of actions, one per request (the last one repeats).
    Actions: ("ok", content) | ("sleep", seconds, content) | ("status", code) | ("raw", bytes)."""

    def __init__(self, scripts: dict[str, list[tuple[Any, ...]]]) -> None:
        self.scripts = scripts
        self.calls: dict[str, int] = {}
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions"
                text = json.dumps(body["messages"])
                marker = next(m for m in outer.scripts if m in text)
                with outer.lock:
                    outer.bodies.append(body)
                    n = outer.calls.get(marker, 0)
                    outer.calls[marker] = n + 1
                script = outer.scripts[marker]
                action = script[min(n, len(script) - 1)]
                try:
                    if action[0] == "status":
                        self.send_response(action[1])
                        self.end_headers()
                        self.wfile.write(b'{"error": "canned"}')
                        return
                    if action[0] == "sleep":
                        time.sleep(action[1])
                        action = ("ok", action[2])
                    payload = (action[1] if action[0] == "raw" else json.dumps(
                        {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": action[1]}}]}).encode())
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def latent(i: int, words: str = "please follow the instruction") -> LatentExamples:
    tokens = ["The", " user", " said", f" zqmark{i}", *[f" {w}" for w in words.split()]]
    acts = [0.0, 0.0, 0.5, 2.0, *[1.0] * len(words.split())]
    example = Example(tokens, acts, center=3, value=2.0, sequence=i, position=3)
    low = Example(tokens, [a / 4 for a in acts], center=3, value=0.5)
    return LatentExamples(i, top=[example], quantiles=[QuantileBin(0.1, 0.6, [low])])


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)


def make(server: ChatServer, tmp_path: Path, **kw: Any) -> LLMLabeller:
    settings = dict(model="canned-7b", base_url=server.url, timeout_s=2.0, retries=2, invalid_retries=1,
                    backoff_s=0.01, concurrency=3, cache_dir=str(tmp_path / "cache"))
    settings.update(kw)
    return LLMLabeller(LLMSettings(**settings))


def test_valid_malformed_outside_taxonomy_and_cache(tmp_path: Path) -> None:
    tax = get_taxonomy("capabilities-v1")
    scripts = {
        "zqmark1": [("ok", answer(("instruction_following", 0.9), ("Template following", 0.4)))],  # title accepted
        "zqmark2": [("ok", "Sure! {labels: [oops]}"), ("ok", "```json\n" + answer(("math", 0.7)) + "\n```")],
        "zqmark3": [("ok", answer(("cooking", 0.8)))],  # never valid
        "zqmark4": [("ok", "not json at all")],
        "zqmark5": [("ok", answer(("safety", 1.5)))],  # confidence out of range, then repeated
    }
    with ChatServer(scripts) as server:
        labeller = make(server, tmp_path)
        labels = labeller.label([latent(i) for i in range(1, 6)], tax)
        by = {}
        for lab in labels:
            by.setdefault(lab.latent, []).append(lab)
        assert [(lab.category, lab.confidence) for lab in by[1]] == [("instruction_following", 0.9),
                                                                     ("template_following", 0.4)]
        assert all(lab.status == "labelled" and lab.labeller == "llm:canned-7b" and lab.model == "canned-7b"
                   and lab.prompt_hash and lab.explanation == "canned" for lab in by[1])
        # malformed JSON re-asked once, with the error fed back, then accepted
        assert [(lab.category, lab.status) for lab in by[2]] == [("math", "labelled")]
        assert server.calls["zqmark2"] == 2
        retry_body = [b for b in server.bodies if "zqmark2" in json.dumps(b["messages"])][1]
        assert retry_body["messages"][-2] == {"role": "assistant", "content": "Sure! {labels: [oops]}"}
        assert "not valid JSON" in retry_body["messages"][-1]["content"]
        # outside the taxonomy: retried, then an explicit failure with the reason
        assert len(by[3]) == 1 and by[3][0].status == "failed" and by[3][0].category is None
        assert "'cooking' is not in the taxonomy" in by[3][0].reason and server.calls["zqmark3"] == 2
        assert by[4][0].status == "failed" and "no JSON object" in by[4][0].reason
        assert by[5][0].status == "failed" and "between 0 and 1" in by[5][0].reason
        first = server.total
        assert first == 1 + 2 + 2 + 2 + 2

        # rerun: valid answers come from the cache, failures are asked again
        again = make(server, tmp_path).label([latent(i) for i in range(1, 6)], tax)
        assert server.calls["zqmark1"] == 1 and server.calls["zqmark2"] == 2
        assert server.total == first + 6
        assert [(lab.latent, lab.category) for lab in again if lab.latent in (1, 2)] == [
            (1, "instruction_following"), (1, "template_following"), (2, "math")]
        # a different model is a different cache key
        make(server, tmp_path, model="other-model").label([latent(1)], tax)
        assert server.calls["zqmark1"] == 2


def test_timeout_then_retry_and_http_errors(tmp_path: Path) -> None:
    tax = get_taxonomy("capabilities-v1")
    scripts = {
        "zqmark1": [("sleep", 1.5, answer(("safety", 0.6))), ("ok", answer(("safety", 0.8)))],
        "zqmark2": [("status", 503), ("status", 429), ("ok", answer(("multilingual", 0.5)))],
        "zqmark3": [("status", 500)],  # always down: failure after the retries
        "zqmark4": [("raw", b"<html>gateway</html>"), ("ok", answer(("math", 0.3)))],
    }
    with ChatServer(scripts) as server:
        labeller = make(server, tmp_path, timeout_s=0.5, retries=2)
        labels = {lab.latent: lab for lab in labeller.label([latent(i) for i in range(1, 5)], tax)}
        assert (labels[1].category, labels[1].confidence) == ("safety", 0.8)  # the timed-out answer never counts
        assert server.calls["zqmark1"] == 2
        assert labels[2].category == "multilingual" and server.calls["zqmark2"] == 3
        assert labels[3].status == "failed" and "HTTP 500" in labels[3].reason and "3 attempt(s)" in labels[3].reason
        assert server.calls["zqmark3"] == 3
        assert labels[4].category == "math" and server.calls["zqmark4"] == 2
        assert labeller.stats["retries"] >= 1 + 2 + 2


def test_timeout_exhausted_is_a_failure(tmp_path: Path) -> None:
    with ChatServer({"zqmark1": [("sleep", 1.0, answer(("math", 0.9)))]}) as server:
        labels = make(server, tmp_path, timeout_s=0.3, retries=1).label([latent(1)], get_taxonomy("capabilities-v1"))
        assert len(labels) == 1 and labels[0].status == "failed" and "timeout" in labels[0].reason


def test_auth_error_stops_the_run(tmp_path: Path) -> None:
    with ChatServer({"zqmark": [("status", 401)]}) as server:
        with pytest.raises(CrosscoderUserError, match="HTTP 401 authentication failed"):
            make(server, tmp_path).label([latent(1), latent(2)], get_taxonomy("capabilities-v1"))


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CrosscoderUserError, match="set OPENAI_API_KEY"):
        LLMLabeller(LLMSettings(model="m", base_url="https://llm.example.com/v1"))
    with pytest.raises(CrosscoderUserError, match="OPENAI_MODEL"):
        LLMLabeller(LLMSettings(base_url="http://localhost:1/v1"))
    with pytest.raises(CrosscoderUserError, match="not an http"):
        LLMLabeller(LLMSettings(model="m", base_url="localhost:8000"))
    monkeypatch.setenv("MY_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    lab = LLMLabeller(LLMSettings(base_url="https://llm.example.com/v1", api_key_env="MY_KEY"))
    assert lab.model == "env-model" and lab.api_key == "sk-test"
    assert "sk-test" not in json.dumps(lab.provenance())


def test_prompt_marks_active_tokens_and_lists_taxonomy() -> None:
    tax = get_taxonomy("capabilities-v1")
    messages = build_messages(latent(7, "hello world"), tax)
    user = messages[-1]["content"]
    assert "The user <<said>> <<zqmark7>> <<hello>> <<world>>" in user
    strong_only = build_messages(latent(7, "hello world"), tax, PromptSettings(mark_fraction=0.6))[-1]["content"]
    assert "The user said <<zqmark7>> hello world" in strong_only
    spaced = Example(["a", " ", "b"], [0.0, 1.0, 0.0], center=1, value=1.0)
    assert render_example(spaced, PromptSettings()).endswith("a<< >>b")
    assert "(peak 2.00 on 'zqmark7')" in user
    assert "Examples with activation between 0.10 and 0.60" in user
    assert "- code_generation (code generation) [part of technical]:" in user
    for cat in tax.categories:
        assert f"- {cat.name}" in user
    with pytest.raises(AnswerError, match='"labels" is empty'):
        parse_answer('{"labels": []}', tax)
    assert parse_answer('{"labels": [{"category": "math", "confidence": 0.2}, {"category": "MATH", "confidence": 1}]}',
                        tax) == ([("math", 1.0)], "")


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(requests_per_minute=1200)  # one per 50 ms
    start = time.monotonic()
    threads = [threading.Thread(target=limiter.acquire) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 0.19  # the 5th start waits 4 intervals
