"""Chat rendering with character spans, so token positions can be traced back to turns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from sae_lens_crosscoder.errors import CrosscoderUserError


@dataclass(frozen=True)
class Turn:
    role: str
    start: int  # character span of the (trimmed) content in the rendered text
    end: int
    first_token: int  # token span of the content, end exclusive
    end_token: int


@dataclass(frozen=True)
class RenderedChat:
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    turns: list[Turn]

    def assistant_target_mask(self) -> list[bool]:
        """True at assistant content tokens and the `<end_of_turn>` closing each: the SFT/SimPO targets."""
        mask = [False] * len(self.input_ids)
        for turn in self.turns:
            if turn.role == "assistant":
                for i in range(turn.first_token, min(turn.end_token + 1, len(mask))):
                    mask[i] = True
        return mask


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> RenderedChat:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    turns, pos = [], 0
    for message in messages:
        role_tag = "model" if message["role"] == "assistant" else message["role"]
        content = message["content"].strip()  # the template applies Jinja's `trim`, i.e. str.strip
        header = f"<start_of_turn>{role_tag}\n"
        at = text.find(header + content + "<end_of_turn>", pos)
        if at < 0:
            raise CrosscoderUserError(
                "the tokenizer's chat template does not render turns as <start_of_turn>ROLE\\nCONTENT<end_of_turn>; "
                "use the organism tokenizer (Gemma-2 template)"
            )
        start = at + len(header)
        end = start + len(content)
        # Specials and the newline after the role tag are separate tokens (byte-level pre-tokenizer
        # splits on whitespace), so plain overlap picks exactly the content tokens.
        inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        first, last = (inside[0], inside[-1] + 1) if inside else (0, 0)
        turns.append(Turn(message["role"], start, end, first, last))
        pos = end
    return RenderedChat(text, ids, offsets, turns)
