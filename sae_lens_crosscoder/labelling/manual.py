"""Manual labels imported from a CSV file.

Columns: ``latent`` and ``category`` (required); ``confidence`` (default 1), ``labeller``
(default ``manual:<file name>``), ``explanation`` / ``note`` (optional). One row per
(latent, category), or several categories in one cell separated by ``;`` or ``|``.
Categories may be given by name or title ("instruction following"). A latent of the
selected set with no row becomes an explicit failure ("no manual label"); rows for
latents outside the set are ignored and counted.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.base import Labeller
from sae_lens_crosscoder.labelling.examples import LatentExamples
from sae_lens_crosscoder.labelling.labels import Label
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy

logger = logging.getLogger(__name__)


class ManualLabeller(Labeller):
    def __init__(self, csv_path: str | Path) -> None:
        self.path = Path(csv_path)
        if not self.path.is_file():
            raise CrosscoderUserError(f"manual labels file {self.path} does not exist; pass --csv PATH")
        self.name = f"manual:{self.path.name}"
        self.ignored = 0

    def provenance(self) -> dict[str, Any]:
        return {"labeller": self.name, "csv": str(self.path)}

    def read(self, taxonomy: Taxonomy) -> list[Label]:
        """Every row of the CSV as labels, validated against the taxonomy."""
        prov = {"taxonomy": taxonomy.name, "taxonomy_hash": taxonomy.fingerprint()}
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "latent" not in header or "category" not in header:
                raise CrosscoderUserError(
                    f"{self.path} needs a header with 'latent' and 'category' columns (found {header or 'none'}); "
                    "add them as the first line"
                )
            labels: list[Label] = []
            for line_no, raw in enumerate(reader, 2):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
                if not any(row.values()):
                    continue
                labels.extend(self._row_labels(row, line_no, taxonomy, prov))
        return labels

    def _row_labels(self, row: dict[str, str], line_no: int, taxonomy: Taxonomy, prov: dict[str, str]) -> list[Label]:
        where = f"{self.path}:{line_no}"
        try:
            latent = int(row["latent"])
        except ValueError:
            raise CrosscoderUserError(f"{where}: latent {row['latent']!r} is not an integer; fix the row") from None
        confidence = 1.0
        if row.get("confidence"):
            try:
                confidence = float(row["confidence"])
            except ValueError:
                raise CrosscoderUserError(f"{where}: confidence {row['confidence']!r} is not a number") from None
            if not 0 <= confidence <= 1:
                raise CrosscoderUserError(f"{where}: confidence {confidence} must lie in [0, 1]")
        names = [c for c in re.split(r"[;|]", row["category"]) if c.strip()]
        if not names:
            raise CrosscoderUserError(f"{where}: empty category; give one (or '{taxonomy.other}')")
        labeller = row.get("labeller") or self.name
        explanation = row.get("explanation") or row.get("note") or ""
        out = []
        for name in names:
            category = taxonomy.resolve(name)
            if category is None:
                raise CrosscoderUserError(
                    f"{where}: {name.strip()!r} is not a category of {taxonomy.name!r}; "
                    f"use one of {', '.join(taxonomy.names)}"
                )
            out.append(Label(latent, category, confidence, labeller, explanation=explanation, **prov))
        return out

    def label(self, latents: Sequence[LatentExamples], taxonomy: Taxonomy) -> list[Label]:
        by_latent: dict[int, list[Label]] = {}
        for lab in self.read(taxonomy):
            by_latent.setdefault(lab.latent, []).append(lab)
        wanted = {le.latent for le in latents}
        self.ignored = sum(len(v) for k, v in by_latent.items() if k not in wanted)
        if self.ignored:
            logger.info("%s: %d row(s) for latents outside the selected set ignored", self.path.name, self.ignored)
        prov = {"taxonomy": taxonomy.name, "taxonomy_hash": taxonomy.fingerprint()}
        out: list[Label] = []
        for le in latents:
            rows = by_latent.get(le.latent)
            out.extend(rows if rows else [Label.failure(le.latent, self.name, f"no manual label in {self.path.name}", **prov)])
        return out
