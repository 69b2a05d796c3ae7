"""Where an organism lives on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError

MANIFEST_NAME = "organism.json"


@dataclass(frozen=True)
class OrganismPaths:
    root: Path
    pt: Path
    it: Path
    simpo: Path
    tokenizer: Path
    web_text: Path  # jsonl of {"text"}
    chat: Path  # jsonl of {"messages"}: the chat data the crosscoders see
    eval_chat: Path  # jsonl of {"messages", "behaviour"}: held out, read by load_eval_set
    preferences: Path  # jsonl of SimPO pairs with a "split" field
    manifest: Path

    @classmethod
    def from_root(cls, root: str | Path) -> OrganismPaths:
        r = Path(root)
        return cls(
            root=r,
            pt=r / "pt",
            it=r / "it",
            simpo=r / "simpo",
            tokenizer=r / "tokenizer",
            web_text=r / "web_text.jsonl",
            chat=r / "chat.jsonl",
            eval_chat=r / "eval_chat.jsonl",
            preferences=r / "preferences.jsonl",
            manifest=r / MANIFEST_NAME,
        )

    def owned(self) -> list[Path]:
        """Everything build_organism writes, and so everything force=True may delete."""
        return [self.pt, self.it, self.simpo, self.tokenizer, self.web_text, self.chat, self.eval_chat, self.preferences, self.manifest]

    def complete(self) -> bool:
        return all(p.exists() for p in self.owned())

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest.exists():
            raise CrosscoderUserError(f"no organism manifest at {self.manifest}; run build_organism({str(self.root)!r}) first")
        return json.loads(self.manifest.read_text())
