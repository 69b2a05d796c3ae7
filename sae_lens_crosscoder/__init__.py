"""sae-lens-crosscoder: crosscoder model diffing for SAELens and TransformerLens.

Importing the package registers its crosscoder architectures with SAELens, so
``SAE.load_from_disk`` and ``TrainingSAE.from_dict`` return crosscoders.
"""

from __future__ import annotations

from sae_lens_crosscoder.architectures import *  # noqa: F403
from sae_lens_crosscoder.architectures import __all__ as _architecture_names
from sae_lens_crosscoder.architectures import register_architectures
from sae_lens_crosscoder.errors import CrosscoderUserError, DataError

__version__ = "0.1.0"

register_architectures()

# Labelling and the registry of diffs, imported on first use so `import sae_lens_crosscoder`
# stays as light as the architectures need.
_LAZY = {
    **dict.fromkeys(["register_taxonomy", "get_taxonomy", "list_taxonomies", "Category", "Taxonomy"],
                    "sae_lens_crosscoder.labelling.taxonomy"),
    **dict.fromkeys(["register_diff", "get_diff", "list_diffs", "ModelDiff", "CrosscoderSpec", "LatentSetSpec",
                     "ReferenceResult", "LabellerSpec", "DifferenceSpec"], "sae_lens_crosscoder.diffs.registry"),
    "analyze_difference": "sae_lens_crosscoder.difference.analysis",
    "run_diff": "sae_lens_crosscoder.diffs.pipeline",
    "Label": "sae_lens_crosscoder.labelling.labels",
    "SelectionRule": "sae_lens_crosscoder.labelling.selection",
    "RuleLabeller": "sae_lens_crosscoder.labelling.rules",
    "LLMLabeller": "sae_lens_crosscoder.labelling.llm",
    "LLMSettings": "sae_lens_crosscoder.labelling.llm",
    "ManualLabeller": "sae_lens_crosscoder.labelling.manual",
    "category_shift": "sae_lens_crosscoder.labelling.shift",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sae_lens_crosscoder' has no attribute {name!r}")


__all__ = [*_architecture_names, "CrosscoderUserError", "DataError", "__version__", *_LAZY]
