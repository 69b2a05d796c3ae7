"""The labeller interface: latents' examples in, labels out, one outcome per latent."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from sae_lens_crosscoder.labelling.examples import LatentExamples
from sae_lens_crosscoder.labelling.labels import Label
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy


class Labeller(ABC):
    """Every latent passed in must come back with at least one label, or one failure."""

    name: str = "labeller"

    @abstractmethod
    def label(self, latents: Sequence[LatentExamples], taxonomy: Taxonomy) -> list[Label]: ...

    def provenance(self) -> dict[str, Any]:
        """What to record as provenance beside the labels (no secrets)."""
        return {"labeller": self.name}


def check_complete(latents: Sequence[LatentExamples], labels: Sequence[Label], labeller: str) -> list[Label]:
    """Turn any latent a labeller forgot into an explicit failure instead of a silent gap."""
    covered = {lab.latent for lab in labels}
    missing = [Label.failure(le.latent, labeller, "labeller returned nothing for this latent")
               for le in latents if le.latent not in covered]
    return [*labels, *missing]
