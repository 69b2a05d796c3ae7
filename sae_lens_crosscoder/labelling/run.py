"""Label the selected latents of an analysis directory: select, read examples, label,
write ``labels.parquet`` (with provenance) and the report fragment."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.base import Labeller, check_complete
from sae_lens_crosscoder.labelling.examples import LatentExamples, read_examples
from sae_lens_crosscoder.labelling.labels import FAILED, LABELLED, labels_frame, write_labels
from sae_lens_crosscoder.labelling.selection import AnalysisDir, SelectionRule, select_latents
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy

logger = logging.getLogger(__name__)


@dataclass
class LabelRun:
    path: Path
    n_latents: int
    n_labelled: int
    n_failed: int
    report_fragment: Path | None = None


def label_analysis(
    analysis_dir: str | Path,
    taxonomy: Taxonomy,
    labeller: Labeller,
    selection: SelectionRule | None = None,
    *,
    latents: list[int] | None = None,
    out: str | Path | None = None,
    set_name: str | None = None,
    report: bool = True,
) -> LabelRun:
    """Label `latents` (or those `selection` picks) of an analysis. Latents without
    examples are recorded as failures, not skipped."""
    analysis = AnalysisDir(Path(analysis_dir))
    selection = selection or SelectionRule()
    chosen = list(latents) if latents is not None else select_latents(analysis, selection)
    if not chosen:
        raise CrosscoderUserError(
            f"the selection ({selection.describe()}) picks no latents in {analysis.path}; "
            "loosen it (e.g. --nu-error-max) or use --select all / --latents"
        )
    examples = read_examples(analysis.path / "examples.jsonl", chosen)
    items = [examples.get(lat, LatentExamples(lat)) for lat in chosen]
    logger.info("labelling %d latents of %s with %s", len(items), analysis.path, labeller.name)
    labels = check_complete(items, labeller.label(items, taxonomy), labeller.name)
    frame = labels_frame(labels)
    out_path = Path(out) if out is not None else analysis.path / "labels.parquet"
    provenance = {
        "analysis": str(analysis.path),
        "set": set_name or out_path.stem,
        "selection": None if latents is not None else selection.to_dict(),
        "selection_description": "explicit latent list" if latents is not None else selection.describe(),
        "latents": chosen,
        "taxonomy": taxonomy.to_dict(),
        "labeller": labeller.provenance(),
    }
    write_labels(out_path, frame, provenance)
    n_labelled = frame.loc[frame["status"] == LABELLED, "latent"].nunique()
    n_failed = frame.loc[frame["status"] == FAILED, "latent"].nunique()
    fragment = None
    if report:
        from sae_lens_crosscoder.labelling.report_section import latents_by_category_html, write_section

        name = provenance["set"]
        html = latents_by_category_html(frame, examples, taxonomy, name)
        fragment = write_section(analysis.path, f"60_labels_{slug(name)}", html)
    return LabelRun(out_path, len(chosen), n_labelled, n_failed, fragment)


def slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "_", text).strip("_") or "labels"
