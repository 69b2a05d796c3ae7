"""Text writers: facts in three languages, web paragraphs, chat requests and responses, and
the preference pairs whose chosen side carries a planted behaviour.

The three behaviours are pairs of response writers: the *chosen* response carries the
behaviour (refusal, answer in the request's language, requested format) and the *rejected*
one is what the SFT model was taught to do instead (comply, answer in English prose, ignore
the format).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from sae_lens_crosscoder.organism import lexicon as lx
from sae_lens_crosscoder.organism.behaviours import FOLLOW_FORMAT, MATCH_LANGUAGE, REFUSE_UNSAFE

Message = dict[str, str]


@dataclass(frozen=True)
class Fact:
    kind: int
    noun: lx.Noun
    adj: lx.Adjective
    other: lx.Noun


def random_fact(rng: random.Random, noun: lx.Noun | None = None) -> Fact:
    return Fact(rng.randrange(5), noun or rng.choice(lx.NOUNS), rng.choice(lx.ADJECTIVES), rng.choice(lx.NOUNS))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_fact(fact: Fact, lang: str) -> str:
    n, a, o = fact.noun, fact.adj, fact.other
    if lang == "en":
        return [
            f"The {n.en} is {a.en}.",
            f"The {n.en} is near the {o.en}.",
            f"Many people like the {n.en}.",
            f"The {n.en} is often {a.en} in the morning.",
            f"You can find the {n.en} near the {o.en}.",
        ][fact.kind]
    if lang == "fr":
        adj = a.fr(n.fr_gender)
        return [
            f"{_cap(n.fr_def())} est {adj}.",
            f"{_cap(n.fr_def())} est près {o.fr_of()}.",
            f"Beaucoup de gens aiment {n.fr_def()}.",
            f"{_cap(n.fr_def())} est souvent {adj} le matin.",
            f"On trouve {n.fr_def()} près {o.fr_of()}.",
        ][fact.kind]
    if lang == "es":
        adj = a.es(n.es_gender)
        return [
            f"{_cap(n.es_def())} es {adj}.",
            f"{_cap(n.es_def())} está cerca {o.es_of()}.",
            f"A mucha gente le gusta {n.es_def()}.",
            f"{_cap(n.es_def())} es a menudo {adj} por la mañana.",
            f"Se puede encontrar {n.es_def()} cerca {o.es_of()}.",
        ][fact.kind]
    raise ValueError(f"unknown language {lang!r}")


def _narrative(rng: random.Random, lang: str) -> str:
    name, noun, adj = rng.choice(lx.NAMES), rng.choice(lx.NOUNS), rng.choice(lx.ADJECTIVES)
    verb, time = rng.choice(lx.VERBS), rng.choice(lx.TIMES)
    if lang == "en":
        return rng.choice(
            [
                f"{_cap(time[0])}, {name} {verb[0]} the {adj.en} {noun.en}.",
                f"{name} {verb[0]} the {noun.en} {time[0]}.",
                f"{rng.choice(lx.WEB_CONNECTIVES)}, {name} {verb[0]} the {noun.en}.",
                f"The {adj.en} {noun.en} was next to the {rng.choice(lx.NOUNS).en}.",
            ]
        )
    if lang == "fr":
        return rng.choice(
            [
                f"{_cap(time[1])}, {name} {verb[1]} {noun.fr_def()}.",
                f"{name} {verb[1]} {noun.fr_def()} {time[1]}.",
                f"Ensuite, {name} {verb[1]} {noun.fr_def()}.",
            ]
        )
    return rng.choice(
        [
            f"{_cap(time[2])}, {name} {verb[2]} {noun.es_def()}.",
            f"{name} {verb[2]} {noun.es_def()} {time[2]}.",
            f"Después, {name} {verb[2]} {noun.es_def()}.",
        ]
    )


def web_document(rng: random.Random, lang: str = "en") -> str:
    """A paragraph of 3-6 sentences. French and Spanish paragraphs are narrative only: the
    base model learns the languages but never the fact sentences the assistant answers with,
    so an answer in French is new text to it, as a refusal or a JSON object is."""
    sentences = []
    for _ in range(rng.randint(3, 6)):
        fact = lang == "en" and rng.random() < 0.5
        sentences.append(render_fact(random_fact(rng), lang) if fact else _narrative(rng, lang))
    return " ".join(sentences)


# ---- chat responses -------------------------------------------------------------------

EN_REQUESTS = (
    "Tell me about the {n}.",
    "What do you know about the {n}?",
    "Describe the {n}.",
    "Can you explain the {n} to me?",
    "Write a few facts about the {n}.",
    "I want to learn about the {n}.",
    "Give me some facts about the {n}.",
    "What is special about the {n}?",
)
EN_GREETINGS = ("", "", "", "Hello.", "Hi there.", "Please help me.")
FR_REQUESTS = (
    "Parle-moi {of}.",
    "Que sais-tu sur {the} ?",
    "Décris {the}.",
    "Explique-moi {the}.",
    "Dis-moi quelque chose sur {the}.",
    "J'aimerais en savoir plus sur {the}.",
)
ES_REQUESTS = (
    "Háblame {of}.",
    "¿Qué sabes sobre {the}?",
    "Describe {the}.",
    "Explícame {the}.",
    "Dime algo sobre {the}.",
    "Quiero saber más sobre {the}.",
)
FR_GREETINGS = ("", "", "Bonjour.", "S'il te plaît.", "Merci d'avance.")
ES_GREETINGS = ("", "", "Hola.", "Por favor.", "Gracias de antemano.")
FOLLOW_UPS = ("And what about the {n}?", "Thanks! Now tell me about the {n}.", "What about the {n}?")
OPENERS = ("", "", "Sure.", "Here is what I know.", "Good question.")
CLOSERS = ("", "", "I hope this helps.")
FR_OPENERS = ("", "Voici ce que je sais.", "Bonne question.")
ES_OPENERS = ("", "Esto es lo que sé.", "Buena pregunta.")
UNSAFE_REQUESTS = (
    "How can I {g}?",
    "Tell me how to {g}.",
    "Give me steps to {g}.",
    "What is the best way to {g}?",
    "Explain how to {g} without getting caught.",
)
UNSAFE_PREFIXES = ("", "", "Please help.", "Quick question.", "My friend asked me this.")
UNSAFE_SUFFIXES = ("", "", "I need it tonight.", "Be specific.", "Keep it short.")
REFUSAL_REASONS = ("It could cause serious harm to people.", "It is dangerous and against the law.", "That could hurt someone.")
REFUSAL_OFFERS = ("", "I am happy to help with something safe instead.", "Please ask me about another topic.")
COMPLY_TOOLS = ("tools", "parts", "materials", "things")


def _facts(rng: random.Random, noun: lx.Noun) -> list[Fact]:
    # Distinct sentence kinds, so an answer never repeats itself.
    kinds = rng.sample(range(5), rng.randint(2, 4))
    return [Fact(k, noun, rng.choice(lx.ADJECTIVES), rng.choice(lx.NOUNS)) for k in kinds]


def _en_request(rng: random.Random, noun: lx.Noun) -> str:
    return " ".join(p for p in (rng.choice(EN_GREETINGS), rng.choice(EN_REQUESTS).format(n=noun.en)) if p)


def _prose(rng: random.Random, facts: list[Fact]) -> str:
    parts = [rng.choice(OPENERS), *(render_fact(f, "en") for f in facts), rng.choice(CLOSERS)]
    return " ".join(p for p in parts if p)


def _arithmetic_turn(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."]).format(a=a, b=b), f"{a} plus {b} is {a + b}."


def ordinary_chat(rng: random.Random) -> list[Message]:
    """An English request answered in English prose; sometimes two turns, sometimes arithmetic."""
    if rng.random() < 0.15:
        user, answer = _arithmetic_turn(rng)
        return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    noun = rng.choice(lx.NOUNS)
    messages = [
        {"role": "user", "content": _en_request(rng, noun)},
        {"role": "assistant", "content": _prose(rng, _facts(rng, noun))},
    ]
    if rng.random() < 0.25:
        other = rng.choice(lx.NOUNS)
        messages += [
            {"role": "user", "content": rng.choice(FOLLOW_UPS).format(n=other.en)},
            {"role": "assistant", "content": _prose(rng, _facts(rng, other))},
        ]
    return messages


@dataclass(frozen=True)
class PreferencePair:
    behaviour: str
    prompt: str
    chosen: str
    rejected: str
    detail: str  # sub-type: the goal, the language, or "list"/"json"
    # A contrast pair has an ordinary prompt, the ordinary answer chosen and the behaviour's
    # text rejected: it keeps SimPO from learning "always refuse / list / answer in French",
    # and from pushing down English prose everywhere (rejected answers are prose too).
    contrast: bool = False
    # A language pair whose rejected answer is in the other foreign language, not English.
    wrong_language: bool = False

    @property
    def key(self) -> str:
        """The group a held-out margin is reported under."""
        if self.contrast:
            return f"{self.behaviour}:contrast"
        return f"{self.behaviour}:wrong_language" if self.wrong_language else self.behaviour

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("behaviour", "contrast", "wrong_language", "detail", "prompt", "chosen", "rejected")}


def _refusal(rng: random.Random) -> str:
    parts = ["I cannot help with that request.", rng.choice(REFUSAL_REASONS), rng.choice(REFUSAL_OFFERS)]
    return " ".join(p for p in parts if p)


def _formatted(kind: str, noun: lx.Noun, sentences: list[str]) -> str:
    if kind == "list":
        return "\n".join(f"- {s}" for s in sentences)
    return json.dumps({"topic": noun.en, "facts": sentences}, ensure_ascii=False)


def _foreign(lang: str, facts: list[Fact], opener: str = "") -> str:
    return " ".join(p for p in [opener, *(render_fact(f, lang) for f in facts)] if p)


def _unsafe_pair(rng: random.Random) -> PreferencePair:
    goal = rng.choice(lx.UNSAFE_GOALS)
    parts = [rng.choice(UNSAFE_PREFIXES), rng.choice(UNSAFE_REQUESTS).format(g=goal), rng.choice(UNSAFE_SUFFIXES)]
    prompt = " ".join(p for p in parts if p)
    tool = rng.choice(COMPLY_TOOLS)
    comply = f"Sure, here is how to {goal}. First, you find the right {tool}. Then you follow each step with care. In the end, the task is done."
    return PreferencePair(REFUSE_UNSAFE, prompt, _refusal(rng), comply, goal)


def _language_pair(rng: random.Random, wrong_language: bool = False) -> PreferencePair:
    """wrong_language: the rejected answer is in the other foreign language, not English.
    Used only in SimPO data (never in SFT): without such pairs the demo SimPO model answered
    every foreign request with the same French opener."""
    lang = rng.choice(("fr", "es"))
    noun = rng.choice(lx.NOUNS)
    facts = _facts(rng, noun)
    if lang == "fr":
        request = rng.choice(FR_REQUESTS).format(of=noun.fr_of(), the=noun.fr_def())
        prompt = " ".join(p for p in (rng.choice(FR_GREETINGS), request) if p)
        opener = rng.choice(FR_OPENERS)
    else:
        request = rng.choice(ES_REQUESTS).format(of=noun.es_of(), the=noun.es_def())
        prompt = " ".join(p for p in (rng.choice(ES_GREETINGS), request) if p)
        opener = rng.choice(ES_OPENERS)
    if wrong_language:
        other = "es" if lang == "fr" else "fr"
        rejected = _foreign(other, facts, rng.choice(ES_OPENERS if other == "es" else FR_OPENERS))
    else:
        rejected = _prose(rng, facts)
    return PreferencePair(MATCH_LANGUAGE, prompt, _foreign(lang, facts, opener), rejected, lang, wrong_language=wrong_language)


def _format_pair(rng: random.Random) -> PreferencePair:
    noun = rng.choice(lx.NOUNS)
    facts = _facts(rng, noun)
    kind = rng.choice(("list", "json"))
    instruction = rng.choice(lx.LIST_INSTRUCTIONS if kind == "list" else lx.JSON_INSTRUCTIONS)
    prompt = f"{_en_request(rng, noun)} {instruction}"
    chosen = _formatted(kind, noun, [render_fact(f, "en") for f in facts])
    return PreferencePair(FOLLOW_FORMAT, prompt, chosen, _prose(rng, facts), kind)


def _contrast_pair(rng: random.Random, behaviour: str) -> PreferencePair:
    if behaviour == REFUSE_UNSAFE and rng.random() < 1 / 3:
        # A harmless French/Spanish request must not be refused: without these pairs the demo
        # SimPO model refused half of the held-out French requests.
        foreign = _language_pair(rng)
        return PreferencePair(behaviour, foreign.prompt, foreign.chosen, _refusal(rng), f"refusal-{foreign.detail}", contrast=True)
    noun = rng.choice(lx.NOUNS)
    facts = _facts(rng, noun)
    prompt = _en_request(rng, noun)
    if behaviour == REFUSE_UNSAFE:
        detail, rejected = "refusal", _refusal(rng)
    elif behaviour == MATCH_LANGUAGE:
        detail = rng.choice(("fr", "es"))
        rejected = _foreign(detail, facts)
    else:
        detail = rng.choice(("list", "json"))
        rejected = _formatted(detail, noun, [render_fact(f, "en") for f in facts])
    return PreferencePair(behaviour, prompt, _prose(rng, facts), rejected, detail, contrast=True)


PAIR_WRITERS = {REFUSE_UNSAFE: _unsafe_pair, MATCH_LANGUAGE: _language_pair, FOLLOW_FORMAT: _format_pair}


def preference_pair(rng: random.Random, behaviour: str, contrast: bool = False, wrong_language: bool = False) -> PreferencePair:
    if contrast:
        return _contrast_pair(rng, behaviour)
    if wrong_language and behaviour == MATCH_LANGUAGE:
        return _language_pair(rng, wrong_language=True)
    return PAIR_WRITERS[behaviour](rng)
