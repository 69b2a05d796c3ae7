"""Labels and the labels table (``labels.parquet``).

One row per (latent, category) for labelled latents, so a latent may carry several
categories; one row with ``status="failed"`` (no category, a reason) for a latent no
label could be obtained for. Every latent handed to a labeller ends in the table one way
or the other, so a set's size is always recoverable and failures are never silent.

Columns: ``latent`` (int), ``category`` (str, null when failed), ``confidence`` (float in
[0, 1]), ``labeller`` (which labeller made it, e.g. ``llm:<model>``, ``rules``,
``manual:<file>``), ``status`` (``labelled`` | ``failed``), ``reason`` (why it failed, or
why the rule labeller fell back to "other"), ``explanation`` (the labeller's short
rationale), ``taxonomy`` (name), ``taxonomy_hash``, ``model`` (LLM model, else empty),
``prompt_hash`` (LLM prompt, else empty). The file's parquet metadata holds a JSON
``provenance`` object (analysis directory, selection rule, labeller settings).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sae_lens_crosscoder.errors import CrosscoderUserError

if TYPE_CHECKING:
    import pandas as pd

LABELLED = "labelled"
FAILED = "failed"
METADATA_KEY = b"sae_lens_crosscoder.labels"


@dataclass
class Label:
    latent: int
    category: str | None
    confidence: float
    labeller: str
    status: Literal["labelled", "failed"] = LABELLED
    reason: str = ""
    explanation: str = ""
    taxonomy: str = ""
    taxonomy_hash: str = ""
    model: str = ""
    prompt_hash: str = ""

    @classmethod
    def failure(cls, latent: int, labeller: str, reason: str, **provenance: str) -> Label:
        return cls(latent=latent, category=None, confidence=0.0, labeller=labeller, status=FAILED, reason=reason,
                   **provenance)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Label:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        values["latent"] = int(values["latent"])
        values["confidence"] = float(values.get("confidence") or 0.0)
        if values.get("category") is not None and not isinstance(values["category"], str):
            values["category"] = None  # NaN from a dataframe
        for key in ("reason", "explanation", "taxonomy", "taxonomy_hash", "model", "prompt_hash"):
            if not isinstance(values.get(key, ""), str):
                values[key] = ""
        return cls(**values)


COLUMNS = [f.name for f in fields(Label)]


def labels_frame(labels: Iterable[Label]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame([lab.to_dict() for lab in labels], columns=COLUMNS)
    frame["latent"] = frame["latent"].astype("int64")
    frame["confidence"] = frame["confidence"].astype("float64")
    return frame.sort_values(["latent", "status", "confidence"], ascending=[True, True, False], kind="stable").reset_index(drop=True)


def labels_from_frame(frame: pd.DataFrame) -> list[Label]:
    return [Label.from_dict(row) for row in frame.to_dict("records")]


def write_labels(path: str | Path, labels: Iterable[Label] | pd.DataFrame, provenance: dict[str, Any] | None = None) -> Path:
    """Write a labels table atomically (a crash leaves the old file or none, never half)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = labels if isinstance(labels, pd.DataFrame) else labels_frame(labels)
    check_labels_frame(frame, Path(path))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(provenance or {}, default=str).encode()
    table = table.replace_schema_metadata(meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_labels(path: str | Path) -> pd.DataFrame:
    """A labels table; its provenance is in ``frame.attrs["provenance"]``. A directory
    means its ``labels.parquet``."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / "labels.parquet"
    if not path.is_file():
        raise CrosscoderUserError(
            f"no labels table at {path}; run `sae-lens-crosscoder label --analysis DIR ...` first or fix the path"
        )
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types on a corrupt file
        raise CrosscoderUserError(f"{path} is not a readable parquet file ({exc}); relabel") from None
    frame = table.to_pandas()
    check_labels_frame(frame, path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    frame.attrs["provenance"] = json.loads(raw) if raw else {}
    return frame


def check_labels_frame(frame: pd.DataFrame, where: Path | str = "labels") -> None:
    missing = [c for c in ("latent", "category", "confidence", "labeller", "status") if c not in frame.columns]
    if missing:
        raise CrosscoderUserError(f"{where} lacks column(s) {missing}; a labels table needs {COLUMNS}")
    bad = set(frame["status"].unique()) - {LABELLED, FAILED}
    if bad:
        raise CrosscoderUserError(f"{where}: unknown status value(s) {sorted(bad)}; use 'labelled' or 'failed'")
    labelled = frame[frame["status"] == LABELLED]
    if labelled["category"].isna().any():
        raise CrosscoderUserError(f"{where}: a 'labelled' row has no category; mark it 'failed' with a reason")
    conf = frame["confidence"].astype(float)
    if ((conf < 0) | (conf > 1)).any() or conf.isna().any():
        raise CrosscoderUserError(f"{where}: confidences must lie in [0, 1]")
