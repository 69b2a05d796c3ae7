"""A model organism for crosscoder diffing: a tiny Gemma-2 base model ("pt"), its SFT chat
model ("it"), and a SimPO fine-tune of it ("simpo") with planted, known behaviours.

Everything is generated and trained locally, with no downloads:

    cfg = OrganismConfig.preset("demo")
    paths = build_organism("organism", cfg)
    tokens, masks = load_eval_set(paths, n_docs=200, context_size=128)
"""

from __future__ import annotations

from sae_lens_crosscoder.organism.behaviours import BEHAVIOURS, ORGANISM_TAXONOMY, Behaviour
from sae_lens_crosscoder.organism.build import build_organism
from sae_lens_crosscoder.organism.config import OrganismConfig
from sae_lens_crosscoder.organism.evalset import load_eval_set
from sae_lens_crosscoder.organism.paths import OrganismPaths

__all__ = ["BEHAVIOURS", "ORGANISM_TAXONOMY", "Behaviour", "OrganismConfig", "OrganismPaths", "build_organism", "load_eval_set"]
