"""The organism as a registered diff: the Gemma-2 / SimPO study in miniature.

As in the study, two crosscoders (pt–simpo and pt–it) whose SimPO-only and it-only latents
are labelled (rule labeller, the organism's taxonomy: one category per planted behaviour
plus "other") and compared; the reference "results" are the planted behaviours themselves,
each planted category should go up. Beside them: the direct pair it–simpo (SimPO was
trained from it, so its planted change is simpo − it), and difference SAEs simpo − pt,
it − pt and simpo − it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sae_lens_crosscoder.diffs.registry import (
    CrosscoderSpec,
    DifferenceSpec,
    LabellerSpec,
    LatentSetSpec,
    ModelDiff,
    ReferenceResult,
)
from sae_lens_crosscoder.labelling.selection import SelectionRule
from sae_lens_crosscoder.labelling.taxonomy import Category, register_taxonomy
from sae_lens_crosscoder.organism.behaviours import BEHAVIOURS, ORGANISM_TAXONOMY
from sae_lens_crosscoder.organism.paths import OrganismPaths

TAXONOMY = "organism-v1"
DIFF_NAME = "organism-it-vs-simpo"


@dataclass(frozen=True)
class DemoScale:
    """How much data and how large a dictionary; `full` is `make demo`, `quick` the tests."""

    d_sae: int
    k: int
    training_tokens: int
    difference_d_sae: int
    difference_k: float
    difference_training_tokens: int  # epochs over the crosscoder's cache; these train fast
    batch_tokens: int
    analysis_tokens: int

    @classmethod
    def preset(cls, name: str) -> DemoScale:
        presets = {
            "full": cls(d_sae=512, k=16, training_tokens=1_000_000, difference_d_sae=512, difference_k=4,
                        difference_training_tokens=4_000_000, batch_tokens=2048, analysis_tokens=200_000),
            "quick": cls(d_sae=256, k=16, training_tokens=200_000, difference_d_sae=128, difference_k=2,
                         difference_training_tokens=2_000_000, batch_tokens=1024, analysis_tokens=40_000),
        }
        return presets[name]


def register_organism_taxonomy() -> None:
    """One category per planted behaviour, with its keywords as the rule lexicon."""
    register_taxonomy(
        TAXONOMY,
        [
            Category(name, str(spec["description"]), keywords=list(spec["keywords"]))  # type: ignore[arg-type]
            for name, spec in ORGANISM_TAXONOMY.items()
        ],
    )


def data_config(paths: OrganismPaths, models: list[str], scale: DemoScale) -> dict[str, Any]:
    """Run-config keys shared by every dictionary of the diff: the pair, the hook after
    the last block (where the fine-tunes differ most), the web + chat mix."""
    layers = _n_layers(paths)
    return {
        "model_names": models,
        "hook_name": f"blocks.{layers - 1}.hook_resid_post",
        "datasets": [
            {"path": str(paths.web_text), "weight": 0.5},
            {"path": str(paths.chat), "weight": 0.5, "chat": True},
        ],
        "context_size": 128,
        "prepend_bos": True,
        "exclude_special_tokens": True,
        "store_batch_size_prompts": 32,
        "train_batch_size_tokens": scale.batch_tokens,
        "training_tokens": scale.training_tokens,
        # one epoch of the crosscoder (plus its norm-estimation batches, in whole windows)
        "cache_token_budget": _whole_windows(scale.training_tokens + 8 * scale.batch_tokens, 65_536),
        "cache_shuffle_buffer_tokens": 65_536,
        "cache_chunk_tokens": 4096,
        "cache_shard_tokens": 65_536,
        "n_batches_for_norm_estimate": 8,
        "architecture": "batchtopk_crosscoder",
        "d_sae": scale.d_sae,
        "k": scale.k,
    }


def organism_diff(paths: OrganismPaths, scale: DemoScale | str = "full", root: str | None = None) -> ModelDiff:
    scale = DemoScale.preset(scale) if isinstance(scale, str) else scale
    register_organism_taxonomy()
    pt, it, simpo = str(paths.pt), str(paths.it), str(paths.simpo)
    analysis = {"rule": "latent_scaling", "n_tokens": scale.analysis_tokens}
    difference = {"d_sae": scale.difference_d_sae, "k": scale.difference_k,
                  "training_tokens": scale.difference_training_tokens}
    latent_scaling = SelectionRule(rule="latent_scaling", nu_error_max=0.2, nu_reconstruction_max=0.5)
    return ModelDiff(
        name=DIFF_NAME,
        description="Model organism: SimPO-only latents (pt–simpo crosscoder) vs it-only latents (pt–it), "
                    "categories compared as simpo relative to it; the planted behaviours are the ground truth",
        models={"pt": pt, "it": it, "simpo": simpo},
        crosscoders=[
            CrosscoderSpec("pt-simpo", config=data_config(paths, [pt, simpo], scale), cache=True, analysis=analysis),
            CrosscoderSpec("pt-it", config=data_config(paths, [pt, it], scale), cache=True, analysis=analysis),
            CrosscoderSpec("it-simpo", config=data_config(paths, [it, simpo], scale), cache=True, analysis=analysis),
        ],
        difference_saes=[
            DifferenceSpec(name, crosscoder=crosscoder, config=difference, analysis={"n_tokens": scale.analysis_tokens})
            for name, crosscoder in (("simpo-minus-pt", "pt-simpo"), ("it-minus-pt", "pt-it"),
                                     ("simpo-minus-it", "it-simpo"))
        ],
        set_a=LatentSetSpec("it-only", crosscoder="pt-it", model=it, selection=latent_scaling),
        set_b=LatentSetSpec("simpo-only", crosscoder="pt-simpo", model=simpo, selection=latent_scaling),
        taxonomy=TAXONOMY,
        labeller=LabellerSpec(kind="rules"),
        share="per_latent",
        n_bootstrap=1000,
        references=[
            ReferenceResult(b.category, f"planted: {b.name}", None, "up", "planted",
                            note="a planted behaviour: simpo's chosen responses carry it, it's do not")
            for b in BEHAVIOURS
        ],
        citation="Built-in model organism (sae_lens_crosscoder.organism)",
        notes=[
            "pt is a 4-layer Gemma-2-architecture model trained here; it is its SFT chat model; simpo is it after "
            "SimPO on preference pairs whose chosen responses carry the planted behaviours.",
            "Ground truth: the token positions where each behaviour acts (organism.load_eval_set).",
        ],
        output_root=root,
    )


def difference_sets(diff: ModelDiff) -> tuple[LatentSetSpec, LatentSetSpec]:
    """The same comparison made with difference latents: it − pt vs simpo − pt."""
    rule = SelectionRule(rule="frequency")
    return (
        replace(diff.set_a, name="it-minus-pt latents", crosscoder="it-minus-pt", source="difference", selection=rule),
        replace(diff.set_b, name="simpo-minus-pt latents", crosscoder="simpo-minus-pt", source="difference",
                selection=rule),
    )


def _whole_windows(tokens: int, window: int) -> int:
    return -(-tokens // window) * window


def _n_layers(paths: OrganismPaths) -> int:
    import json

    return int(json.loads((paths.pt / "config.json").read_text())["num_hidden_layers"])
