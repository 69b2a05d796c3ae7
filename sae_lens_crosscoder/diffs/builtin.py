"""Built-in diffs.

``gemma2-9b-it-vs-simpo``: Boughorbel, Dalvi, Durrani, Hawasly, "Beyond the Leaderboard:
Understanding Performance Disparities in Large Language Models via Model Diffing",
EMNLP 2025 (arXiv 2509.18792). Two crosscoders, pt-SimPO and pt-it, from the presets;
SimPO-only and it-only latents selected by Latent Scaling; their capability profiles
compared as SimPO relative to it. The reference results are every shift the project's
method note lists, each marked as from the paper's abstract or from secondary summaries.
"""

from __future__ import annotations

from sae_lens_crosscoder.diffs.registry import (
    CrosscoderSpec,
    LabellerSpec,
    LatentSetSpec,
    ModelDiff,
    ReferenceResult,
    register_diff,
)
from sae_lens_crosscoder.labelling.selection import SelectionRule

PT, IT, SIMPO = "google/gemma-2-9b", "google/gemma-2-9b-it", "princeton-nlp/gemma-2-9b-it-SimPO"
ABSTRACT, SECONDARY = "abstract", "secondary summaries"
CITATION = (
    "Boughorbel, Dalvi, Durrani, Hawasly. Beyond the Leaderboard: Understanding Performance Disparities in Large "
    "Language Models via Model Diffing. EMNLP 2025. arXiv:2509.18792"
)

# (taxonomy category, the study's wording, relative change in %, direction, provenance)
_SHIFTS = [
    ("instruction_following", "instruction following", 151.7, "up", ABSTRACT),
    ("factual_verification", "factual verification", 88.8, "up", ABSTRACT),
    ("multilingual", "multilingual / linguistic processing", 43.8, "up", ABSTRACT),
    ("safety", "safety and content moderation", 32.8, "up", ABSTRACT),
    ("template_following", "template following", None, "up", ABSTRACT),
    ("code_generation", "code generation", -28.1, "down", SECONDARY),
    ("technical", "technical (code and math) overall", -17.4, "down", SECONDARY),
    ("query_classification", "query classification", -37.1, "down", SECONDARY),
    ("structured_output", "structured output generation", -37.1, "down", SECONDARY),
    ("self_reference", "model self-reference", -44.1, "down", ABSTRACT),
    ("hallucination_management", "hallucination detection / management", -68.5, "down", ABSTRACT),
]

# the study's rule: Latent Scaling ratios with Minder et al.'s cut-offs, no delta_norm cut
_LATENT_SCALING = SelectionRule(rule="latent_scaling", nu_error_max=0.2, nu_reconstruction_max=0.5)

GEMMA2_IT_VS_SIMPO = ModelDiff(
    name="gemma2-9b-it-vs-simpo",
    description="Gemma-2-9B: SimPO-only latents (pt-SimPO crosscoder) vs it-only latents (pt-it), "
                "capability categories compared as SimPO relative to it (Boughorbel et al., EMNLP 2025)",
    models={"pt": PT, "it": IT, "simpo": SIMPO},
    crosscoders=[
        CrosscoderSpec("pt-simpo", preset="gemma2-9b-pt-vs-simpo", analysis={"rule": "latent_scaling"}),
        CrosscoderSpec("pt-it", preset="gemma2-9b-pt-vs-it", analysis={"rule": "latent_scaling"}),
    ],
    set_a=LatentSetSpec("it-only", crosscoder="pt-it", model=IT, selection=_LATENT_SCALING,
                        published_count=113, published_source="paper (via the method note)"),
    set_b=LatentSetSpec("SimPO-only", crosscoder="pt-simpo", model=SIMPO, selection=_LATENT_SCALING,
                        published_count=92, published_source="paper (via the method note)"),
    taxonomy="capabilities-v1",
    # the study annotated with an LLM; which one and with what prompt is unpublished
    labeller=LabellerSpec(kind="llm"),
    share="per_latent",
    references=[
        ReferenceResult(cat, wording, value, direction, prov,
                        note="" if value is not None else "the abstract states the direction without a figure")
        for cat, wording, value, direction, prov in _SHIFTS
    ],
    citation=CITATION,
    notes=[
        "Published: 92 SimPO-only latents (pt-SimPO) and 113 it-only latents (pt-it), selected by Latent Scaling; "
        "delta_norm found no exclusive latents at the usual cut-offs (< 0.1 or > 0.9).",
        "Unpublished: layer, dictionary size, sparsity type, training data, the annotator model and prompt, "
        "the full taxonomy, the nu thresholds, and the exact formula behind the percentages.",
        "The presets follow Minder et al.'s recipe (layer 20 of 42, expansion 32 = 114,688 latents, BatchTopK "
        "k = 100, 100M tokens of FineWeb + LMSYS-Chat-1M); this is the likely recipe, not a confirmed one.",
        "Selection uses Minder et al.'s cut-offs nu_error < 0.2 and nu_reconstruction < 0.5 without a delta_norm "
        "cut; the study's own thresholds are unknown, so the set sizes will differ from 92 and 113.",
        "Shares are per latent (a latent counts once for each category it carries); single-label per-latent "
        "shares over 92 and 113 latents cannot produce +151.7 %, so the study's labels were likely multi-label "
        "or weighted: try --share per_label or --weight confidence too.",
        "Provenance 'abstract': stated in the paper's abstract; 'secondary summaries': from summaries of the "
        "paper, not checked against its body.",
    ],
)

register_diff(GEMMA2_IT_VS_SIMPO)
