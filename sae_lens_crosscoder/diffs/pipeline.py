"""Run a registered diff end to end, skipping steps whose artifacts exist.

Layout under the diff's root (default ``runs/<name>``)::

    diff.json                         the diff and its resolved run configs
    <crosscoder>/cache/               paired activation cache (when the diff caches)
    <crosscoder>/crosscoder/          the trained crosscoder (SAELens format)
    <crosscoder>/analysis/            latents.parquet, examples.jsonl, summary.json, report.html
    <crosscoder>/analysis/labels_<set>.parquet
    <difference>/sae/                 a difference SAE (SAELens format), trained on its crosscoder's data
    <difference>/analysis/            its analysis joined to that crosscoder (join.parquet, ...)
    shift/                            shift.csv, shift.json, shift.png
    report.html                       the diff's report

Order: per crosscoder cache -> train -> analyze; per difference SAE (cache ->) train ->
analyze; per latent set label; then shift, then report. A step runs when forced (``force`` / ``redo``), when its artifacts are missing or
were made with other settings (another labeller, another share definition), or when a
step it depends on ran in this invocation; otherwise it is skipped.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sae_lens_crosscoder.diffs.registry import LabellerSpec, LatentSetSpec, ModelDiff
from sae_lens_crosscoder.diffs.steps import Steps, default_steps
from sae_lens_crosscoder.errors import CrosscoderUserError

if TYPE_CHECKING:
    import pandas as pd

    from sae_lens_crosscoder.labelling.base import Labeller

logger = logging.getLogger(__name__)

STEPS = ("cache", "train", "analyze", "label", "shift", "report")


@dataclass
class StepRecord:
    step: str
    target: str  # the crosscoder, latent set, or "diff"
    status: Literal["ran", "skipped", "would run"]
    reason: str
    artifacts: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class DiffRun:
    diff: str
    root: Path
    records: list[StepRecord]
    report: Path | None = None

    def ran(self, step: str) -> list[str]:
        return [r.target for r in self.records if r.step == step and r.status == "ran"]

    def to_dict(self) -> dict[str, Any]:
        return {"diff": self.diff, "root": str(self.root), "records": [asdict(r) for r in self.records],
                "report": str(self.report) if self.report else None}


@dataclass
class DiffLayout:
    root: Path

    def crosscoder_dir(self, name: str) -> Path:
        return self.root / name

    def analysis_dir(self, name: str) -> Path:
        return self.root / name / "analysis"

    def labels_path(self, side: LatentSetSpec) -> Path:
        from sae_lens_crosscoder.labelling.run import slug

        return self.analysis_dir(side.crosscoder) / f"labels_{slug(side.name)}.parquet"

    @property
    def shift_dir(self) -> Path:
        return self.root / "shift"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


# ---- artifact checks -------------------------------------------------------------------
def cache_done(path: str | Path | None) -> bool:
    manifest = Path(path or "") / "cache.json"
    if not path or not manifest.is_file():
        return False
    try:
        return bool(json.loads(manifest.read_text()).get("complete"))
    except json.JSONDecodeError:
        return False


def training_done(path: str | Path) -> bool:
    # save_final writes these beside the weights; a run killed mid-training leaves only checkpoints
    return all((Path(path) / name).is_file() for name in ("cfg.json", "training_summary.json"))


def analysis_done(path: Path) -> bool:
    return all((path / name).is_file() for name in ("latents.parquet", "examples.jsonl", "summary.json"))


def labels_made_by(path: Path) -> str | None:
    """The labeller kind (rules / llm / manual) recorded in a labels table, None if absent."""
    if not path.is_file():
        return None
    from sae_lens_crosscoder.labelling.labels import read_labels

    name = read_labels(path).attrs.get("provenance", {}).get("labeller", {}).get("labeller", "")
    return str(name).split(":", 1)[0]


def shift_definitions(shift_dir: Path) -> dict[str, Any] | None:
    path = shift_dir / "shift.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("definitions", {})


# ---- the chain -------------------------------------------------------------------------
class _Planner:
    def __init__(self, force: bool, redo: Iterable[str], dry_run: bool) -> None:
        self.force, self.redo, self.dry_run = force, set(redo), dry_run
        self.records: list[StepRecord] = []

    def step(self, step: str, target: str, done: bool, upstream: bool, action: Callable[[], Any],
             artifacts: list[Path], stale: str = "") -> bool:
        """Run `action` if needed; True when it ran (or would run, in a dry run)."""
        if self.force or step in self.redo:
            reason = "forced"
        elif stale:
            reason = stale
        elif not done:
            reason = "artifacts missing"
        elif upstream:
            reason = "an earlier step ran"
        else:
            self.records.append(StepRecord(step, target, "skipped", "artifacts exist", [str(p) for p in artifacts]))
            return False
        if self.dry_run:
            self.records.append(StepRecord(step, target, "would run", reason, [str(p) for p in artifacts]))
            return True
        logger.info("[%s] %s: running (%s)", step, target, reason)
        start = time.perf_counter()
        action()
        self.records.append(StepRecord(step, target, "ran", reason, [str(p) for p in artifacts],
                                       round(time.perf_counter() - start, 3)))
        return True


def run_diff(
    diff: ModelDiff | str,
    *,
    root: str | Path | None = None,
    force: bool = False,
    redo: Iterable[str] = (),
    steps: Steps | None = None,
    labeller: LabellerSpec | None = None,
    config_overrides: dict[str, list[str]] | None = None,
    share: str | None = None,
    weight: str | None = None,
    n_bootstrap: int | None = None,
    dry_run: bool = False,
) -> DiffRun:
    """Run (or, with ``dry_run``, plan) the chain of a diff. ``labeller`` replaces the
    diff's labeller defaults; ``config_overrides`` maps a crosscoder name to extra
    ``key=value`` run-config overrides."""
    from sae_lens_crosscoder.diffs.registry import get_diff
    from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy

    diff = get_diff(diff) if isinstance(diff, str) else diff
    redo = list(redo)
    for step in redo:
        if step not in STEPS:
            raise CrosscoderUserError(f"--redo {step!r}: steps are {', '.join(STEPS)}")
    unknown = set(config_overrides or {}) - set(diff.spec_names)
    if unknown:
        raise CrosscoderUserError(
            f"overrides name crosscoder(s) {sorted(unknown)}; this diff has {', '.join(diff.spec_names)}"
        )
    steps = steps or default_steps()
    layout = DiffLayout(diff.root(root))
    diff.validate(layout.root)
    taxonomy = get_taxonomy(diff.taxonomy)
    configs = diff.run_configs(layout.root, config_overrides)
    labeller_spec = labeller or diff.labeller
    share, weight = share or diff.share, weight or diff.weight
    n_bootstrap = diff.n_bootstrap if n_bootstrap is None else n_bootstrap
    plan = _Planner(force, redo, dry_run)
    made: list[Labeller] = []

    def get_labeller() -> Labeller:
        from sae_lens_crosscoder.labelling.options import make_labeller

        if not made:  # built once, and only when labelling runs: an LLM labeller needs its settings then
            made.append(make_labeller(labeller_spec.kind, labeller_spec.options))
        return made[0]

    if not dry_run:
        preview = run_diff(diff, root=layout.root, force=force, redo=redo, steps=steps, labeller=labeller_spec,
                           config_overrides=config_overrides, share=share, weight=weight, n_bootstrap=n_bootstrap,
                           dry_run=True)
        if any(r.step == "label" and r.status == "would run" for r in preview.records):
            get_labeller()  # a missing API key or model fails now, not after hours of training
        layout.root.mkdir(parents=True, exist_ok=True)
        _write_json(layout.root / "diff.json", {"diff": diff.to_dict(),
                                                "run_configs": {k: v.to_dict() for k, v in configs.items()}})

    # ---- per crosscoder: cache, train, analyse --------------------------------------------
    crosscoder_ran: dict[str, bool] = {}
    cache_ran: dict[str, bool] = {}
    for spec in diff.crosscoders:
        cfg = configs[spec.name]
        out = Path(cfg.output_path)
        analysis = layout.analysis_dir(spec.name)
        upstream = False
        if spec.cache:
            upstream |= plan.step("cache", spec.name, cache_done(cfg.cached_activations_path), upstream,
                                  lambda cfg=cfg: steps.cache(cfg), [Path(cfg.cached_activations_path)])
        cache_ran[spec.name] = upstream
        upstream |= plan.step("train", spec.name, training_done(out), upstream,
                              lambda cfg=cfg: steps.train(cfg), [out])
        upstream |= plan.step("analyze", spec.name, analysis_done(analysis), upstream,
                              lambda cfg=cfg, out=out, analysis=analysis, spec=spec:
                              steps.analyze(out, analysis, cfg, dict(spec.analysis)),
                              [analysis])
        crosscoder_ran[spec.name] = upstream

    # ---- per difference SAE: (cache,) train on the crosscoder's data, analyse joined to it ------
    for dspec in diff.difference_saes:
        cfg = configs[dspec.name]
        out = Path(cfg.output_path)
        analysis = layout.analysis_dir(dspec.name)
        upstream = cache_ran.get(dspec.crosscoder or "", False)  # its training data changed
        if dspec.cache:
            upstream |= plan.step("cache", dspec.name, cache_done(cfg.cached_activations_path), upstream,
                                  lambda cfg=cfg: steps.cache(cfg), [Path(cfg.cached_activations_path)])
        upstream |= plan.step("train", dspec.name, training_done(out), upstream, lambda cfg=cfg: steps.train(cfg), [out])
        options = dict(dspec.analysis)
        if dspec.crosscoder:
            options.update(join_crosscoder=configs[dspec.crosscoder].output_path,
                           crosscoder_analysis=str(layout.analysis_dir(dspec.crosscoder)), join=dict(dspec.join))
        upstream |= plan.step("analyze", dspec.name, analysis_done(analysis),
                              upstream or crosscoder_ran.get(dspec.crosscoder or "", False),
                              lambda cfg=cfg, out=out, analysis=analysis, options=options:
                              steps.analyze(out, analysis, cfg, options),
                              [analysis])
        crosscoder_ran[dspec.name] = upstream

    # ---- per latent set: label -------------------------------------------------------------
    def label(side: LatentSetSpec) -> None:
        from sae_lens_crosscoder.labelling.run import label_analysis

        result = label_analysis(layout.analysis_dir(side.crosscoder), taxonomy, get_labeller(),
                                side.resolved_selection(), out=layout.labels_path(side), set_name=side.name)
        logger.info("[label] %s: %d/%d labelled, %d failed", side.name, result.n_labelled, result.n_latents,
                    result.n_failed)

    labels_ran = False
    for side in (diff.set_a, diff.set_b):
        path = layout.labels_path(side)
        by = labels_made_by(path)
        stale = f"labelled by {by}, {labeller_spec.kind} requested" if by and by != labeller_spec.kind else ""
        labels_ran |= plan.step("label", side.name, path.is_file(), crosscoder_ran[side.crosscoder],
                                lambda side=side: label(side), [path], stale)

    # ---- shift and report -------------------------------------------------------------------
    def shift() -> None:
        from sae_lens_crosscoder.labelling.labels import read_labels
        from sae_lens_crosscoder.labelling.shift import category_shift, write_shift

        frame = category_shift(read_labels(layout.labels_path(diff.set_a)), read_labels(layout.labels_path(diff.set_b)),
                               taxonomy, share=share, weight=weight, n_bootstrap=n_bootstrap, seed=diff.seed,
                               names=(diff.set_a.name, diff.set_b.name))
        write_shift(layout.shift_dir, frame, diff.reference_values(),
                    title=f"{diff.name}: {diff.set_b.name} vs {diff.set_a.name} (share {share})")

    defs = shift_definitions(layout.shift_dir)
    stale = ""
    if defs is not None and (defs.get("share"), defs.get("weight")) != (share, weight):
        stale = f"made with share {defs.get('share')}/{defs.get('weight')}, {share}/{weight} requested"
    shift_ran = plan.step("shift", "diff", defs is not None, labels_ran, shift, [layout.shift_dir], stale)
    plan.step("report", "diff", layout.report.is_file(), shift_ran, lambda: write_diff_report(diff, layout),
              [layout.report])
    return DiffRun(diff.name, layout.root, plan.records, layout.report if layout.report.is_file() else None)


# ---- the report -------------------------------------------------------------------------
def write_diff_report(diff: ModelDiff, layout: DiffLayout) -> Path:
    """Add the shift and latents-by-category sections to each analysis report, and write
    the diff's own report.html beside them."""
    from sae_lens_crosscoder.labelling.examples import read_examples
    from sae_lens_crosscoder.labelling.labels import read_labels
    from sae_lens_crosscoder.labelling.report_section import (
        latents_by_category_html,
        rebuild_report,
        shift_section_html,
        write_section,
    )
    from sae_lens_crosscoder.labelling.run import slug
    from sae_lens_crosscoder.labelling.shift import read_shift
    from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy

    taxonomy = get_taxonomy(diff.taxonomy)
    frame, references = read_shift(layout.shift_dir)
    png = layout.shift_dir / "shift.png"
    shift_html = shift_section_html(frame, references, png, heading=f"Category shift ({diff.name})")
    set_sections = []
    sizes = []
    for side in (diff.set_a, diff.set_b):
        labels = read_labels(layout.labels_path(side))
        analysis = layout.analysis_dir(side.crosscoder)
        examples = read_examples(analysis / "examples.jsonl", labels["latent"].unique().tolist())
        section = latents_by_category_html(labels, examples, taxonomy, side.name)
        write_section(analysis, f"60_labels_{slug(side.name)}", section)
        write_section(analysis, "50_category_shift", shift_html)
        set_sections.append(section)
        published = f"{side.published_count} ({html.escape(side.published_source)})" if side.published_count else "n/a"
        source = " (difference SAE)" if side.source == "difference" else ""
        sizes.append(f"<tr><td>{html.escape(side.name)}</td><td>{html.escape(side.crosscoder + source)}</td>"
                     f"<td>{html.escape(side.model)}</td><td>{html.escape(side.resolved_selection().describe())}</td>"
                     f"<td>{labels['latent'].nunique()}</td><td>{published}</td>"
                     f"<td><a href='{html.escape(side.crosscoder)}/analysis/report.html'>analysis report</a></td></tr>")
    for name in diff.spec_names:
        rebuild_report(layout.analysis_dir(name))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in diff.notes)
    # fragments others add beside the diff (e.g. the organism's ground-truth scores), by name
    extra = "".join(p.read_text() for p in sorted((layout.root / "report_sections").glob("*.html")))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(diff.name)}</title></head>
<body style="font-family:sans-serif;max-width:1100px;margin:auto;padding:16px">
<h1>{html.escape(diff.name)}</h1>
<p>{html.escape(diff.description)}</p>
<p style="font-size:13px">{html.escape(diff.citation)}</p>
<table style="border-collapse:collapse;font-size:13px" border="1" cellpadding="4">
<tr><th>set</th><th>crosscoder</th><th>model</th><th>selection</th><th>latents</th><th>published</th><th></th></tr>
{''.join(sizes)}</table>
{extra}
{shift_html}
{''.join(set_sections)}
<h2>Notes</h2><ul style="font-size:13px">{notes}</ul>
</body></html>
"""
    tmp = layout.report.with_name(".report.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, layout.report)
    return layout.report


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def shift_of(run: DiffRun) -> pd.DataFrame:
    """The shift table a run wrote."""
    from sae_lens_crosscoder.labelling.shift import read_shift

    return read_shift(run.root / "shift")[0]
