"""``lumbarseg evaluate``: per-plane and ensemble Dice per class, per subject and per level.

Scoring rule (see :mod:`lumbarseg.metrics`): each class only within the superior-inferior
extent, in patient space, of its labelled voxels in the study; classes a set does not name are
not scored. Studies of sets in ``configs/data/split.json`` are evaluated on their ``holdout``
subjects, and on subjects the split does not place (new studies of a known set, ``unseen``),
unless ``all_subjects`` or other ``groups`` are asked for (``train`` and ``fusion``: judging a
candidate before any held-out figure); sets the split does not know are evaluated whole.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lumbarseg import metrics, planes, tissues
from lumbarseg.datasets import tissue_target
from lumbarseg.io import manifest
from lumbarseg.io.study import Series, Study, StudyError
from lumbarseg.pipeline import Segmenter
from lumbarseg.training import GROUPS, UNSEEN, group_of, load_split

MODELS = (*planes.PLANES, "ensemble")
RULE = ("each class is scored only within the superior-inferior extent (patient space) of its labelled voxels "
        "in the study; classes the study's set does not name are not scored; level names count as their class")


def patient_z(series: Series) -> np.ndarray:
    """Patient superior-inferior coordinate (mm) of every voxel, ``(I, J, K)``."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in series.shape)
    a = series.affine[2].astype(np.float32)
    return a[0] * i[:, None, None] + a[1] * j[None, :, None] + a[2] * k[None, None, :] + a[3]


def study_dice(prediction: np.ndarray, study: Study) -> dict[str, float]:
    """Dice per annotated class of one tissue-class prediction on a labelled study's primary
    series, by the scoring rule above (:data:`RULE`)."""
    series = study.primary
    annotated = {t.index for n in study.structures.values() for t in tissues.classes_of(n)}
    return metrics.dice_per_class(prediction, tissue_target(series.label, study.structures), patient_z(series), annotated)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def scored_groups(groups: tuple[str, ...] = ("holdout",), *, all_subjects: bool = False) -> list[str]:
    """The split groups (:func:`lumbarseg.training.group_of`) whose subjects are evaluated:
    ``groups``, or all with ``all_subjects``. ``unseen`` subjects were never trained on, so they
    go with ``holdout``, and only with it: a choice of training groups is a choice of seen data."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown split group(s) {sorted(unknown)}; the split's groups are {GROUPS}")
    asked = set(GROUPS) if all_subjects else set(groups)
    return [g for g in (*GROUPS, UNSEEN) if g in asked or (g == UNSEEN and "holdout" in asked)]


def evaluated_entries(data: str | Path, *, all_subjects: bool = False,
                      groups: tuple[str, ...] = ("holdout",)) -> list[manifest.ManifestEntry]:
    """The studies of a data folder that the scoring rule above evaluates: of sets the split
    names, the subjects of :func:`scored_groups`; of other sets (phantoms), every study."""
    split = load_split()
    scored = scored_groups(groups, all_subjects=all_subjects)
    entries = [e for e in manifest.read_manifest(data) if e.set not in split or group_of(e, split) in scored]
    if not entries:
        raise StudyError(data, f"no studies to evaluate: no subject in split group(s) {', '.join(scored)} "
                               "(use --groups or --all-subjects)")
    return entries


def evaluate(weights: str | Path, data: str | Path, *, all_subjects: bool = False,
             groups: tuple[str, ...] = ("holdout",)) -> dict:
    segmenter = Segmenter.load(weights)
    split = load_split()
    entries = evaluated_entries(data, all_subjects=all_subjects, groups=groups)
    subjects = []
    for entry in tqdm(entries, desc="evaluating", unit="study"):
        study = manifest.load_entry(entry)
        series = study.primary
        if series.label is None:
            continue
        segmentation = segmenter.segment(series)
        z = patient_z(series)
        predictions = {**segmentation.plane_classes, "ensemble": segmentation.classes}
        subjects.append({
            "set": entry.set, "subject": entry.subject, "group": group_of(entry, split),
            "dice": {m: study_dice(p, study) for m, p in predictions.items()},
            "levels": {m: metrics.dice_per_level(p, series.label, study.structures, z) for m, p in predictions.items()},
        })
    sets = sorted({s["set"] for s in subjects})
    return {
        "weights": str(weights), "data": str(data), "rule": RULE,
        "subjects_evaluated": len(subjects), "groups": scored_groups(groups, all_subjects=all_subjects),
        "holdout_only": not all_subjects and set(groups) == {"holdout"},
        "summary": {m: _mean([s["dice"][m] for s in subjects]) for m in MODELS},
        "per_set": {st: {m: _mean([s["dice"][m] for s in subjects if s["set"] == st]) for m in MODELS} for st in sets},
        "per_level": {m: _mean([s["levels"][m] for s in subjects]) for m in MODELS},
        "subjects": subjects,
    }


def print_results(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)  # whole tables in logs and pipes
    classes = sorted({c for m in MODELS for c in results["summary"][m]})
    table = Table("model", *classes, title=f"mean Dice, {results['subjects_evaluated']} studies")
    for m in MODELS:
        table.add_row(m, *(f"{results['summary'][m].get(c, float('nan')):.3f}" for c in classes))
    console.print(table)
    for st, per_model in results["per_set"].items():
        cls = sorted({c for m in MODELS for c in per_model[m]})
        t = Table("model", *cls, title=st)
        for m in MODELS:
            t.add_row(m, *(f"{per_model[m].get(c, float('nan')):.3f}" for c in cls))
        console.print(t)
    order = [lv for lv in (*tissues.DISC_LEVELS, *tissues.VERTEBRAE) if lv in results["per_level"]["ensemble"]]
    if order:
        t = Table("model", *order, title="Dice per level")
        for m in MODELS:
            t.add_row(m, *(f"{results['per_level'][m].get(lv, float('nan')):.3f}" for lv in order))
        console.print(t)
    console.print(f"[dim]{results['rule']}[/dim]")
