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

__all__ = [*_architecture_names, "CrosscoderUserError", "DataError", "__version__"]
