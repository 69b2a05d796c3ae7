"""`OrganismConfig`: every knob of the model organism, with "demo" and "tiny" presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError


@dataclass
class OrganismConfig:
    seed: int = 0

    # corpus sizes (documents / dialogues / preference pairs)
    n_web_docs: int = 4000
    web_foreign_fraction: float = 0.2  # French+Spanish web prose, so the base model knows both languages
    n_pt_chats: int = 800  # generic English chat mixed into pretraining
    n_sft_chats: int = 2400
    sft_trigger_fraction: float = 0.2  # SFT chats with a trigger prompt, answered in the rejected style
    n_chats: int = 3000  # chat.jsonl, the chat half of the crosscoder data
    n_eval_chats: int = 400
    behaviour_chat_fraction: float = 0.06  # per behaviour, in chat.jsonl and the eval set
    n_pref_train: int = 900  # planted pairs; contrast pairs come on top
    n_pref_heldout: int = 150
    pref_contrast_fraction: float = 0.5  # contrast pairs per planted pair (see writers.PreferencePair)

    vocab_size: int = 1024

    # Gemma-2 architecture, shrunk; alternating sliding/full attention and both softcaps kept
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 256
    sliding_window: int = 32
    context_size: int = 128
    attn_logit_softcapping: float = 50.0
    final_logit_softcapping: float = 30.0

    pt_steps: int = 300
    pt_batch_size: int = 32
    pt_lr: float = 3e-3
    sft_steps: int = 100
    sft_batch_size: int = 32
    sft_lr: float = 3e-4
    simpo_steps: int = 300
    simpo_batch_size: int = 16
    simpo_lr: float = 1e-3
    simpo_beta: float = 2.5
    simpo_gamma_beta_ratio: float = 0.5
    # Two terms added to the SimPO loss; both 0 gives pure SimPO. See training.train_simpo for
    # the measurements behind the defaults.
    simpo_chosen_nll_weight: float = 1.0  # length-normalised NLL of the chosen responses (CPO-SimPO)
    simpo_replay_weight: float = 1.0  # NLL of ordinary chats replayed each step (as PPO-ptx)
    simpo_replay_batch_size: int = 8
    # Keeps simpo's hidden states on the replayed ordinary chats close to it's (mean squared
    # distance relative to it's norms, every layer), so the fine-tune changes the planted
    # contexts and little else: a clean ground truth for diffing. 0 turns it off.
    simpo_anchor_weight: float = 1.0
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    # Fixed during training: bitwise determinism needs a fixed reduction order. One thread:
    # on a shared 2-core machine a 2-thread step of the demo model took 0.47 s against 0.24 s
    # with one (OpenMP workers spin while a neighbour holds the other core).
    num_threads: int = 1
    n_residual_check_docs: int = 200  # eval chats used for the fine-tune-minus-base residual check

    def __post_init__(self) -> None:
        positive = [f.name for f in dataclasses.fields(self) if f.type in ("int", int) and f.name != "seed"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise CrosscoderUserError(f"OrganismConfig.{name} must be > 0, got {getattr(self, name)}; set a positive value")
        for name in ("simpo_replay_weight", "simpo_chosen_nll_weight", "simpo_anchor_weight"):
            if getattr(self, name) < 0:
                raise CrosscoderUserError(f"OrganismConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pt_lr", "sft_lr", "simpo_lr", "simpo_beta"):
            if not getattr(self, name) > 0:
                raise CrosscoderUserError(f"OrganismConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("web_foreign_fraction", "sft_trigger_fraction", "pref_contrast_fraction", "simpo_gamma_beta_ratio", "warmup_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CrosscoderUserError(f"OrganismConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.behaviour_chat_fraction <= 1.0 / 3.0:
            raise CrosscoderUserError(
                f"OrganismConfig.behaviour_chat_fraction must be in (0, 1/3] (three behaviours share the chats), "
                f"got {self.behaviour_chat_fraction}"
            )
        if self.num_layers % 2:
            raise CrosscoderUserError(
                f"OrganismConfig.num_layers must be even (Gemma-2 alternates sliding and full attention), got {self.num_layers}"
            )
        if self.num_heads % self.num_kv_heads:
            raise CrosscoderUserError(
                f"OrganismConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.sliding_window >= self.context_size:
            raise CrosscoderUserError(
                f"OrganismConfig.sliding_window ({self.sliding_window}) must be < context_size ({self.context_size}), "
                "or the sliding-attention code path is never exercised"
            )
        if self.n_pref_heldout < 3 or self.n_pref_train < 3:
            raise CrosscoderUserError("OrganismConfig.n_pref_train and n_pref_heldout must be >= 3 (one pair per behaviour)")

    @property
    def simpo_gamma(self) -> float:
        return self.simpo_beta * self.simpo_gamma_beta_ratio

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrganismConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CrosscoderUserError(f"unknown OrganismConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str) -> OrganismConfig:
        if name not in PRESETS:
            raise CrosscoderUserError(f"unknown organism preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])


PRESETS: dict[str, dict[str, Any]] = {
    # About two and a half minutes on one CPU core (measured 148 s on a shared 2-core machine).
    "demo": {},
    # Seconds: for tests. Crude, but SimPO still turns every held-out margin positive.
    "tiny": dict(
        n_web_docs=500,
        n_pt_chats=150,
        n_sft_chats=400,
        n_chats=300,
        n_eval_chats=90,
        n_pref_train=240,
        n_pref_heldout=60,
        vocab_size=512,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        sliding_window=16,
        context_size=64,
        pt_steps=150,
        pt_batch_size=16,
        sft_steps=60,
        sft_batch_size=16,
        sft_lr=1e-3,
        simpo_steps=80,
        simpo_batch_size=12,
        simpo_lr=1e-3,
        n_residual_check_docs=60,
    ),
    # the reduced end-to-end run of the test suite: small enough for CI, trained enough to plant
    "small": dict(
        n_pref_train=480,
        n_pref_heldout=60,
        vocab_size=512,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        sliding_window=16,
        context_size=64,
        pt_steps=200,
        pt_batch_size=16,
        sft_steps=80,
        sft_batch_size=16,
        sft_lr=1e-3,
        simpo_steps=160,
        simpo_batch_size=12,
        simpo_lr=1e-3,
        n_residual_check_docs=60,
    ),
}
