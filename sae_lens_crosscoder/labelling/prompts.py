"""The LLM labeller's prompt, and the validation of its answers.

The prompt lists the taxonomy (names, titles, descriptions) and the latent's examples:
the max-activating ones, then a few from each activation quantile, each trimmed to a
window around the token it is centred on, with every active token marked
``<<token>>`` and the peak activation given. It asks for JSON only:
``{"labels": [{"category": NAME, "confidence": 0..1}, ...], "explanation": "..."}``.
An answer is valid when it parses, has at least one label, every category resolves in
the taxonomy and every confidence is a number in [0, 1]; anything else is an
``AnswerError`` whose message is fed back to the model on retry.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from sae_lens_crosscoder.labelling.examples import Example, LatentExamples, token_text
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy

# Bumped whenever the prompt text changes, so cached answers to an older prompt are not reused.
PROMPT_VERSION = "capabilities-prompt-v2"

SYSTEM = (
    "You are an interpretability researcher. You label latents (features) of a sparse dictionary trained on a "
    "language model's internal activations with the capability categories they relate to, judging from the text "
    "on which each latent activates. You answer with JSON only."
)

Messages = list[dict[str, str]]


class AnswerError(ValueError):
    """An answer that does not satisfy the requested format or taxonomy."""


@dataclass
class PromptSettings:
    n_top: int = 10
    n_per_quantile: int = 2
    window_before: int = 24
    window_after: int = 8
    mark_fraction: float = 0.0  # mark tokens with activation > this fraction of the example's peak (0: all active)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_example(example: Example, settings: PromptSettings) -> str:
    start = max(0, example.center - settings.window_before)
    stop = min(len(example.tokens), example.center + settings.window_after + 1)
    cut = max(0.0, settings.mark_fraction * example.value)
    parts = []
    for i in range(start, stop):
        text = token_text(example.tokens[i])
        if example.acts[i] > cut:
            body = text.lstrip()
            if body:  # keep a leading space outside the marks, so words stay readable
                text = f"{text[: len(text) - len(body)]}<<{body}>>"
            else:
                text = f"<<{text}>>"
        parts.append(text)
    body = "".join(parts).replace("\n", "\\n")
    peak = token_text(example.tokens[example.center]).strip() if example.tokens else ""
    return f"(peak {example.value:.2f} on {peak!r}) {body}"


def build_messages(latent: LatentExamples, taxonomy: Taxonomy, settings: PromptSettings | None = None) -> Messages:
    settings = settings or PromptSettings()
    lines = [f"Categories of the taxonomy {taxonomy.name!r} (answer with the category names):"]
    for cat in taxonomy.categories:
        where = f" [part of {cat.parent}]" if cat.parent else ""
        title = f" ({cat.title})" if cat.title and cat.title != cat.name else ""
        lines.append(f"- {cat.name}{title}{where}: {cat.description}")
    lines += ["", "Text where the latent activates. Active tokens are marked <<like this>>; "
              "'peak' is the strongest activation in the excerpt and the token carrying it.", "",
              "Max-activating examples:"]
    for i, example in enumerate(latent.top[: settings.n_top], 1):
        lines.append(f"{i}. {render_example(example, settings)}")
    if settings.n_per_quantile > 0:
        for q in latent.quantiles:
            if not q.examples:
                continue
            lines.append(f"Examples with activation between {q.low:.2f} and {q.high:.2f}:")
            for example in q.examples[: settings.n_per_quantile]:
                lines.append(f"- {render_example(example, settings)}")
    lines += [
        "",
        "Which categories does this latent relate to? Give every category that clearly applies (one or more), "
        f"most confident first, each with a confidence between 0 and 1; answer {taxonomy.other!r} if none does.",
        'Reply with JSON only: {"labels": [{"category": "<name>", "confidence": <number>}], '
        '"explanation": "<one sentence>"}',
    ]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def prompt_hash(messages: Messages) -> str:
    return hashlib.sha256(json.dumps([PROMPT_VERSION, messages], sort_keys=True).encode()).hexdigest()[:16]


def cache_key(model: str, messages: Messages, taxonomy: Taxonomy) -> str:
    blob = json.dumps([PROMPT_VERSION, model, messages, taxonomy.fingerprint()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_answer(text: str, taxonomy: Taxonomy) -> tuple[list[tuple[str, float]], str]:
    """(category, confidence) pairs, most confident first, and the explanation."""
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("the answer is empty")
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, stop = body.find("{"), body.rfind("}")
    if start < 0 or stop <= start:
        raise AnswerError("the answer holds no JSON object")
    try:
        data = json.loads(body[start: stop + 1])
    except json.JSONDecodeError as exc:
        raise AnswerError(f"the answer is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
        raise AnswerError('the answer needs a "labels" list')
    if not data["labels"]:
        raise AnswerError(f'"labels" is empty; give at least one category (or {taxonomy.other!r})')
    best: dict[str, float] = {}
    for item in data["labels"]:
        if not isinstance(item, dict) or not isinstance(item.get("category"), str):
            raise AnswerError('each label must be an object with a "category" string')
        category = taxonomy.resolve(item["category"])
        if category is None:
            raise AnswerError(f"category {item['category']!r} is not in the taxonomy; use only: {', '.join(taxonomy.names)}")
        confidence = item.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
            raise AnswerError(f"confidence {confidence!r} for {item['category']!r} must be a number between 0 and 1")
        best[category] = max(best.get(category, 0.0), float(confidence))
    explanation = data.get("explanation")
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    return ranked, explanation if isinstance(explanation, str) else ""
