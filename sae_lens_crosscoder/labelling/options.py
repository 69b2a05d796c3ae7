"""Building labellers from a kind and options, and the CLI flags for them (shared by the
``label`` and ``diff`` commands)."""

from __future__ import annotations

import argparse
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.base import Labeller

LABELLERS = ("rules", "llm", "manual")


def make_labeller(kind: str, options: dict[str, Any] | None = None) -> Labeller:
    """``kind`` is rules | llm | manual; options are the labeller's settings
    (RuleLabeller's arguments, LLMSettings fields, or {"csv": path})."""
    options = dict(options or {})
    if kind == "rules":
        from sae_lens_crosscoder.labelling.rules import RuleLabeller

        try:
            return RuleLabeller(**options)
        except TypeError as exc:
            raise CrosscoderUserError(f"rule labeller: {exc}; options are threshold, context, max_labels") from None
    if kind == "llm":
        from sae_lens_crosscoder.labelling.llm import LLMLabeller, LLMSettings

        return LLMLabeller(LLMSettings.from_dict(options))
    if kind == "manual":
        from sae_lens_crosscoder.labelling.manual import ManualLabeller

        if not options.get("csv"):
            raise CrosscoderUserError("the manual labeller needs a CSV of labels: pass --csv PATH")
        return ManualLabeller(options["csv"])
    raise CrosscoderUserError(f"unknown labeller {kind!r}; use one of {', '.join(LABELLERS)}")


def add_labeller_arguments(parser: argparse.ArgumentParser, default: str | None = "rules") -> None:
    g = parser.add_argument_group("labeller")
    g.add_argument("--labeller", choices=LABELLERS, default=default,
                   help=f"who labels: transparent lexicon rules, an LLM over an OpenAI-compatible API, or a CSV "
                        f"(default: {default or 'the diff’s'})")
    g.add_argument("--csv", help="manual labels: CSV with columns latent,category[,confidence,labeller,explanation]")
    g.add_argument("--rule-threshold", type=float, help="rules: share of activation mass a lexicon must match (0.3)")
    g.add_argument("--rule-context", type=int, help="rules: tokens of context on each side of an active token (2)")
    g.add_argument("--base-url", help="llm: chat-completions base URL (default $OPENAI_BASE_URL, else OpenAI)")
    g.add_argument("--llm-model", help="llm: model name (default $OPENAI_MODEL)")
    g.add_argument("--api-key-env", help="llm: environment variable holding the API key (OPENAI_API_KEY)")
    g.add_argument("--concurrency", type=int, help="llm: requests in flight (4)")
    g.add_argument("--rpm", type=float, help="llm: at most this many requests per minute")
    g.add_argument("--timeout", type=float, help="llm: seconds per request (60)")
    g.add_argument("--retries", type=int, help="llm: retries after a timeout or HTTP 429/5xx (3)")
    g.add_argument("--invalid-retries", type=int, help="llm: re-asks after an invalid answer (2)")
    g.add_argument("--cache-dir", help="llm: on-disk answer cache (default ~/.cache/sae-lens-crosscoder/llm-labels)")
    g.add_argument("--json-mode", action="store_true", default=None,
                   help="llm: request response_format json_object (if the server supports it)")


_ARG_TO_OPTION = {
    "rules": {"rule_threshold": "threshold", "rule_context": "context"},
    "llm": {"base_url": "base_url", "llm_model": "model", "api_key_env": "api_key_env", "concurrency": "concurrency",
            "rpm": "requests_per_minute", "timeout": "timeout_s", "retries": "retries",
            "invalid_retries": "invalid_retries", "cache_dir": "cache_dir", "json_mode": "json_mode"},
    "manual": {"csv": "csv"},
}


def options_from_args(args: argparse.Namespace, kind: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The labeller options the flags set, on top of `base` (e.g. a diff's defaults)."""
    options = dict(base or {})
    for arg, option in _ARG_TO_OPTION[kind].items():
        value = getattr(args, arg, None)
        if value is not None:
            options[option] = value
    return options
