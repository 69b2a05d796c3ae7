"""The LLM labeller, over any OpenAI-compatible chat-completions HTTP API.

``POST {base_url}/chat/completions`` with the standard body, so vLLM, llama.cpp's
server, Ollama (``http://localhost:11434/v1``) and hosted APIs all work. Settings come
from arguments, else the environment: ``OPENAI_BASE_URL`` (default
``https://api.openai.com/v1``), the key from ``OPENAI_API_KEY`` (or another variable
named by ``api_key_env``; servers on loopback need none), the model from ``OPENAI_MODEL``.

Per latent: the prompt is looked up in an on-disk cache (keyed by model, prompt and
taxonomy; it stores the raw answer), so a rerun sends nothing for latents already
labelled. Otherwise it is sent, with transport failures (timeouts, connection errors,
HTTP 408/429/5xx) retried with exponential backoff, and invalid answers (see
``prompts.parse_answer``) re-asked with the error fed back. A latent whose retries run
out becomes a ``failed`` row with the reason. Authentication or not-found errors (HTTP
401/403/404) stop the run: they mean the configuration is wrong for every latent.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.base import Labeller, check_complete
from sae_lens_crosscoder.labelling.examples import LatentExamples
from sae_lens_crosscoder.labelling.labels import Label
from sae_lens_crosscoder.labelling.prompts import (
    PROMPT_VERSION,
    AnswerError,
    Messages,
    PromptSettings,
    build_messages,
    cache_key,
    parse_answer,
    prompt_hash,
)
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
FATAL_STATUS = {401: "authentication failed (check the API key)", 403: "access denied (check the API key)",
                404: "not found (check the base URL and the model name)"}
LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "sae-lens-crosscoder" / "llm-labels"


@dataclass
class LLMSettings:
    model: str | None = None  # default: $OPENAI_MODEL
    base_url: str | None = None  # default: $OPENAI_BASE_URL, else the OpenAI API
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key; the key itself is never stored
    timeout_s: float = 60.0
    retries: int = 3  # transport retries per request
    invalid_retries: int = 2  # re-asks after an invalid answer
    backoff_s: float = 1.0  # wait backoff_s * 2**attempt between transport retries
    max_backoff_s: float = 60.0
    concurrency: int = 4
    requests_per_minute: float | None = None
    temperature: float = 0.0
    max_tokens: int = 400
    json_mode: bool = False  # send response_format={"type": "json_object"} (not every server has it)
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/sae-lens-crosscoder/llm-labels
    prompt: PromptSettings = field(default_factory=PromptSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LLMSettings:
        raw = dict(raw)
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise CrosscoderUserError(f"LLM labeller: unknown setting(s) {sorted(unknown)}; use {sorted(known)}")
        if isinstance(raw.get("prompt"), dict):
            raw["prompt"] = PromptSettings(**raw["prompt"])
        return cls(**raw)


class RateLimiter:
    """Spaces request starts at least 60 / rpm seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


class ResponseCache:
    """One JSON file per key, written atomically, so concurrent threads and interrupted
    runs never leave a half-written entry."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)


class TransportFailure(Exception):
    """A request that failed after its retries; the latent is recorded as failed."""


class FatalAPIError(Exception):
    """A response that means the configuration is wrong for every request."""


class LLMLabeller(Labeller):
    def __init__(self, settings: LLMSettings | None = None, **overrides: Any) -> None:
        settings = settings or LLMSettings()
        if overrides:
            settings = LLMSettings.from_dict({**settings.to_dict(), **overrides, "prompt": settings.prompt})
        self.config = settings
        self.model = settings.model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise CrosscoderUserError("no LLM model given: pass --llm-model NAME or set OPENAI_MODEL")
        self.base_url = (settings.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        parsed = urllib.parse.urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise CrosscoderUserError(
                f"LLM base URL {self.base_url!r} is not an http(s) URL; pass e.g. --base-url http://localhost:8000/v1"
            )
        self.api_key = os.environ.get(settings.api_key_env) or None
        if self.api_key is None and parsed.hostname not in LOOPBACK:
            raise CrosscoderUserError(
                f"no API key for {self.base_url}: set {settings.api_key_env} (or name another variable with "
                "--api-key-env); servers on localhost need none"
            )
        if settings.concurrency < 1 or settings.retries < 0 or settings.invalid_retries < 0 or settings.timeout_s <= 0:
            raise CrosscoderUserError("LLM labeller: concurrency >= 1, retries >= 0 and timeout > 0 are required")
        self.name = f"llm:{self.model}"
        self.cache = ResponseCache(Path(settings.cache_dir) if settings.cache_dir else default_cache_dir())
        self.limiter = RateLimiter(settings.requests_per_minute)
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "invalid": 0, "failed": 0}
        self._stats_lock = threading.Lock()

    def provenance(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "labeller": self.name, "model": self.model, "base_url": self.base_url,
                "prompt_version": PROMPT_VERSION}

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # ---- one HTTP exchange, with transport retries -------------------------------------
    def complete(self, messages: Messages) -> str:
        """The content of the model's reply to `messages`."""
        s = self.config
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": s.temperature,
                                "max_tokens": s.max_tokens}
        if s.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(s.retries + 1):
            if attempt:
                self._count("retries")
            self.limiter.acquire()
            self._count("requests")
            wait_s = min(s.max_backoff_s, s.backoff_s * 2**attempt)
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=headers,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code in FATAL_STATUS:
                    raise FatalAPIError(f"{self.base_url}: HTTP {exc.code} {FATAL_STATUS[exc.code]}{detail}") from None
                if exc.code not in RETRYABLE_STATUS:
                    raise TransportFailure(f"HTTP {exc.code}{detail}") from None
                last = f"HTTP {exc.code}{detail}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait_s = min(s.max_backoff_s, float(retry_after))
            except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = "timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else f"{reason}"
            else:
                try:
                    payload = json.loads(raw)
                    content = payload["choices"][0]["message"]["content"]
                except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                    raise AnswerError(f"the server's reply is not a chat completion: {raw[:200]!r}") from None
                return content if isinstance(content, str) else ""
            if attempt < s.retries:
                logger.debug("request failed (%s); retrying in %.2fs", last, wait_s)
                time.sleep(wait_s)
        raise TransportFailure(f"{last} after {s.retries + 1} attempt(s)")

    # ---- one latent ------------------------------------------------------------------
    def label_one(self, latent: LatentExamples, taxonomy: Taxonomy) -> list[Label]:
        messages = build_messages(latent, taxonomy, self.config.prompt)
        key = cache_key(self.model, messages, taxonomy)
        prov = {"taxonomy": taxonomy.name, "taxonomy_hash": taxonomy.fingerprint(), "model": self.model,
                "prompt_hash": prompt_hash(messages)}
        if latent.empty:
            return [Label.failure(latent.latent, self.name, "no activating examples", **prov)]
        cached = self.cache.get(key)
        if cached is not None:
            try:
                ranked, explanation = parse_answer(cached["response"], taxonomy)
                self._count("cache_hits")
                return self._labels(latent.latent, ranked, explanation, prov)
            except (AnswerError, KeyError, TypeError):
                pass  # an entry that no longer validates is asked again
        conversation = list(messages)
        reason = ""
        for attempt in range(self.config.invalid_retries + 1):
            content: str | None = None
            try:
                content = self.complete(conversation)
                ranked, explanation = parse_answer(content, taxonomy)
            except TransportFailure as exc:
                self._count("failed")
                return [Label.failure(latent.latent, self.name, f"request failed: {exc}", **prov)]
            except AnswerError as exc:
                self._count("invalid")
                reason = str(exc)
                conversation = list(messages)
                if content is not None:  # show the model its mistake; a garbled HTTP reply is just resent
                    conversation += [{"role": "assistant", "content": content},
                                     {"role": "user", "content": f"That answer is invalid: {reason}. Reply again "
                                      "with JSON only, in the requested form, using only the listed category names."}]
                continue
            self.cache.put(key, {"model": self.model, "prompt_version": PROMPT_VERSION, "taxonomy": taxonomy.name,
                                 "taxonomy_hash": taxonomy.fingerprint(), "messages": messages, "response": content,
                                 "attempts": attempt + 1, "created": time.time()})
            return self._labels(latent.latent, ranked, explanation, prov)
        self._count("failed")
        attempts = self.config.invalid_retries + 1
        return [Label.failure(latent.latent, self.name, f"invalid answer after {attempts} attempt(s): {reason}", **prov)]

    def _labels(self, latent: int, ranked: list[tuple[str, float]], explanation: str, prov: dict[str, str]) -> list[Label]:
        return [Label(latent, category, confidence, self.name, explanation=explanation, **prov)
                for category, confidence in ranked]

    # ---- many latents -----------------------------------------------------------------
    def label(self, latents: Sequence[LatentExamples], taxonomy: Taxonomy) -> list[Label]:
        results: dict[int, list[Label]] = {}
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            futures = {pool.submit(self.label_one, le, taxonomy): le.latent for le in latents}
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                exc = future.exception()
                if isinstance(exc, FatalAPIError):
                    for other in futures:
                        other.cancel()
                    raise CrosscoderUserError(str(exc)) from None
                if exc is not None:
                    raise exc
            for future, latent in futures.items():
                results[latent] = future.result()
        labels = [lab for le in latents for lab in results.get(le.latent, [])]
        logger.info("LLM labeller %s: %s", self.name, self.stats)
        return check_complete(latents, labels, self.name)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", "replace").strip()
    except Exception:  # the body is best-effort context only
        text = ""
    return f": {text[:200]}" if text else ""
