"""The rule labeller: transparent per-category lexicons, offline, a baseline.

For each active token (activation > 0) of each example, the text of the token and its
``context`` neighbours on each side is matched against every category's lexicon. A
category's score is the share of the latent's activation mass whose window matches it:
``score(c) = Σ act_i · [window_i matches c] / Σ act_i`` over all examples (top and
quantile ones alike, so a latent that only matches in its strongest examples scores
lower than one that matches throughout). Categories with ``score >= threshold`` are
assigned with that score as confidence; if none qualifies the latent gets the taxonomy's
fallback category with confidence ``1 - best score`` and a reason naming the best
near-miss. A parent category with no lexicon of its own is reached through its children.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.base import Labeller
from sae_lens_crosscoder.labelling.examples import LatentExamples, token_text
from sae_lens_crosscoder.labelling.labels import Label
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy


class RuleLabeller(Labeller):
    name = "rules"

    def __init__(self, threshold: float = 0.3, context: int = 2, max_labels: int = 3) -> None:
        if not 0 < threshold <= 1:
            raise CrosscoderUserError(f"rule threshold {threshold} must lie in (0, 1]")
        if context < 0 or max_labels < 1:
            raise CrosscoderUserError("rule context must be >= 0 and max_labels >= 1")
        self.threshold, self.context, self.max_labels = threshold, context, max_labels

    def provenance(self) -> dict[str, Any]:
        return {"labeller": self.name, "threshold": self.threshold, "context": self.context,
                "max_labels": self.max_labels}

    def scores(self, latent: LatentExamples, taxonomy: Taxonomy) -> dict[str, float]:
        lexicons = [(c.name, c.lexicon) for c in taxonomy.categories if c.lexicon is not None]
        mass = {name: 0.0 for name, _ in lexicons}
        total = 0.0
        for example in latent.all_examples():
            texts = [token_text(t) for t in example.tokens]
            for i, act in enumerate(example.acts):
                if act <= 0:
                    continue
                total += act
                window = "".join(texts[max(0, i - self.context): i + self.context + 1])
                for name, lexicon in lexicons:
                    if lexicon.search(window):
                        mass[name] += act
        return {name: (m / total if total > 0 else 0.0) for name, m in mass.items()}

    def label(self, latents: Sequence[LatentExamples], taxonomy: Taxonomy) -> list[Label]:
        if not any(c.lexicon is not None for c in taxonomy.categories):
            raise CrosscoderUserError(
                f"taxonomy {taxonomy.name!r} has no keywords or patterns; the rule labeller needs lexicons"
            )
        prov = {"taxonomy": taxonomy.name, "taxonomy_hash": taxonomy.fingerprint()}
        out: list[Label] = []
        for latent in latents:
            if latent.empty:
                out.append(Label.failure(latent.latent, self.name, "no activating examples", **prov))
                continue
            scores = self.scores(latent, taxonomy)
            ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            hits = [(c, s) for c, s in ranked if s >= self.threshold][: self.max_labels]
            if hits:
                for category, score in hits:
                    out.append(Label(latent.latent, category, round(score, 4), self.name,
                                     explanation=f"lexicon matches {score:.0%} of the activation mass", **prov))
            else:
                best, best_score = ranked[0] if ranked else ("none", 0.0)
                out.append(Label(latent.latent, taxonomy.other, round(1 - best_score, 4), self.name,
                                 reason=f"no lexicon reached {self.threshold:.2f} (best: {best} {best_score:.2f})",
                                 **prov))
        return out
