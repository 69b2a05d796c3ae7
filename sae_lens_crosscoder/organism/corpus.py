"""The generated corpus: web-like prose, chat dialogues and preference pairs, as streams.

Pure Python and seeded: every stream draws from its own `random.Random` keyed by
(seed, stream name), so adding a stream or changing one stream's size never shifts
another stream's text. The sentences themselves come from `writers`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.organism.behaviours import BEHAVIOUR_NAMES, FOLLOW_FORMAT, MATCH_LANGUAGE, REFUSE_UNSAFE
from sae_lens_crosscoder.organism.writers import Message, PreferencePair, ordinary_chat, preference_pair, web_document


def stream_rng(seed: int, name: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"organism:{seed}:{name}")


@dataclass(frozen=True)
class Chat:
    """A dialogue; `behaviour` names the planted behaviour its last assistant turn carries."""

    messages: tuple[tuple[str, str], ...]
    behaviour: str | None = None

    @classmethod
    def of(cls, messages: list[Message], behaviour: str | None = None) -> Chat:
        return cls(tuple((m["role"], m["content"]) for m in messages), behaviour)

    def message_dicts(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def to_record(self, with_behaviour: bool) -> dict[str, Any]:
        record: dict[str, Any] = {"messages": self.message_dicts()}
        if with_behaviour:
            record["behaviour"] = self.behaviour
        return record


def chat_mixture(rng: random.Random, n: int, behaviour_fraction: float, respond: str) -> list[Chat]:
    """`n` chats, each planted behaviour's prompt at `behaviour_fraction`, the rest ordinary.

    respond="chosen" gives the behaviour-carrying response (the data the crosscoders see);
    respond="rejected" gives the SFT model's style (comply, English prose), marked as no behaviour.
    """
    chats = []
    for _ in range(n):
        u = rng.random()
        slot = int(u / behaviour_fraction) if behaviour_fraction > 0 else len(BEHAVIOUR_NAMES)
        if slot < len(BEHAVIOUR_NAMES):
            pair = preference_pair(rng, BEHAVIOUR_NAMES[slot])
            answer = pair.chosen if respond == "chosen" else pair.rejected
            chats.append(
                Chat.of(
                    [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": answer}],
                    pair.behaviour if respond == "chosen" else None,
                )
            )
        else:
            chats.append(Chat.of(ordinary_chat(rng)))
    return chats


@dataclass
class Corpus:
    web: list[str]
    pt_chats: list[Chat]  # generic chat mixed into pretraining
    sft_chats: list[Chat]
    chats: list[Chat]  # written to chat.jsonl: what the crosscoders see
    eval_chats: list[Chat]  # held out from everything, with behaviour labels
    pref_train: list[PreferencePair]
    pref_heldout: list[PreferencePair]

    def tokenizer_texts(self) -> Iterator[str]:
        yield from self.web
        # Role tags are written as they appear after <start_of_turn>, so "user" and "model"
        # become single tokens.
        for chats in (self.pt_chats, self.sft_chats, self.chats):
            for chat in chats:
                for role, content in chat.messages:
                    yield f"{'model' if role == 'assistant' else role}\n{content}"
        for pair in self.pref_train:
            yield f"user\n{pair.prompt}"
            yield f"model\n{pair.chosen}"
            yield f"model\n{pair.rejected}"


def generate_corpus(
    seed: int,
    n_web_docs: int,
    web_foreign_fraction: float,
    n_pt_chats: int,
    n_sft_chats: int,
    sft_trigger_fraction: float,
    n_chats: int,
    n_eval_chats: int,
    behaviour_chat_fraction: float,
    n_pref_train: int,
    n_pref_heldout: int,
    pref_contrast_fraction: float,
) -> Corpus:
    web_rng = stream_rng(seed, "web")
    web = []
    for _ in range(n_web_docs):
        u = web_rng.random()
        lang = "en" if u >= web_foreign_fraction else ("fr" if u < web_foreign_fraction / 2 else "es")
        web.append(web_document(web_rng, lang))

    pt_rng = stream_rng(seed, "pt_chat")
    pt_chats = [Chat.of(ordinary_chat(pt_rng)) for _ in range(n_pt_chats)]
    sft_chats = chat_mixture(stream_rng(seed, "sft"), n_sft_chats, sft_trigger_fraction / len(BEHAVIOUR_NAMES), "rejected")
    chats = chat_mixture(stream_rng(seed, "chat"), n_chats, behaviour_chat_fraction, "chosen")
    eval_chats = chat_mixture(stream_rng(seed, "eval"), n_eval_chats, behaviour_chat_fraction, "chosen")

    # Round-robin over behaviours (see PLANTED_CYCLE); contrast pairs are interleaved at
    # `pref_contrast_fraction` per planted pair.
    pref_train = _pairs(stream_rng(seed, "pref"), n_pref_train, pref_contrast_fraction, exclude=None)
    pref_heldout = _pairs(
        stream_rng(seed, "pref_heldout"), n_pref_heldout, pref_contrast_fraction, exclude={p.prompt for p in pref_train}
    )
    return Corpus(web, pt_chats, sft_chats, chats, eval_chats, pref_train, pref_heldout)


# Language pairs are drawn twice as often as the others: answering in the request's language
# (and not in the other foreign one) was the hardest behaviour for the demo model. At equal
# weights and 350 SimPO steps, greedy decoding answered only 8 of 25 held-out Spanish requests
# in Spanish, while refusing and formatting at 100 %.
PLANTED_CYCLE = (REFUSE_UNSAFE, MATCH_LANGUAGE, FOLLOW_FORMAT, MATCH_LANGUAGE)


def _pairs(rng: random.Random, n_planted: int, contrast_fraction: float, exclude: set[str] | None) -> list[PreferencePair]:
    """`n_planted` planted pairs plus about `contrast_fraction` as many contrast pairs.

    With `exclude` (the training prompts), prompts are unique and never in `exclude`: a
    held-out margin is then measured on prompts SimPO never trained on.
    """
    pairs: list[PreferencePair] = []
    n_contrast = round(n_planted * contrast_fraction)
    slots = [False] * n_planted + [True] * n_contrast
    rng.shuffle(slots)
    counters = {False: 0, True: 0}
    for contrast in slots:
        cycle = BEHAVIOUR_NAMES if contrast else PLANTED_CYCLE
        behaviour = cycle[counters[contrast] % len(cycle)]
        counters[contrast] += 1
        # Half of the language pairs reject the other foreign language instead of English.
        wrong_language = behaviour == MATCH_LANGUAGE and not contrast and rng.random() < 0.5
        for _ in range(1000):
            pair = preference_pair(rng, behaviour, contrast, wrong_language)
            if exclude is None or pair.prompt not in exclude:
                break
        else:
            raise CrosscoderUserError(
                f"could not draw {n_planted} held-out {behaviour} prompts unseen in training; lower n_pref_train or n_pref_heldout"
            )
        if exclude is not None:
            exclude.add(pair.prompt)
        pairs.append(pair)
    return pairs


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
