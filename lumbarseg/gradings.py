"""Findings truth on real MRI: a radiologist's per-disc gradings and expert masks made measurable.

SPIDER (``../shared/data/spider_t2_space``) comes with ``gradings.csv``: per patient and disc,
counted from the caudal end (1 = the lowest disc, ``L5-S1`` when there is no transitional
vertebra), whether the disc is herniated. Its masks label the *whole* vertebra (body and posterior
elements in one value, :data:`lumbarseg.tissues.PARTIAL`), which the measurement code cannot read:
it needs the vertebral bodies (endplates, the count of lumbar bodies). :func:`expert_classes`
splits each whole-vertebra voxel by where it lies against the spinal canal at its height, in its
own sagittal column: anterior to the canal's front wall it is body, otherwise posterior elements
(left out of the measurement as background).

:func:`score_gradings` pairs a findings report's discs with the graded discs twice: by the
report's level names (which tests naming and herniation together) and by order from the caudal
end (which judges the herniation rule whatever the names), so that a naming error and a
herniation error are told apart.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lumbarseg import tissues
from lumbarseg.io.study import Series, StudyError

GRADINGS = "gradings.csv"  # beside a set's images
BIN_MM = 1.0  # heights at which the canal's front wall is taken


@dataclass(frozen=True)
class DiscGrading:
    subject: str
    from_caudal: int  # 1 = the lowest disc
    level: str  # the name gradings.csv gives (assumes no transitional vertebra)
    herniated: bool
    bulging: bool = False  # the radiologist's disc_bulging (False when the table has no such column)


def load_gradings(folder: str | Path) -> dict[str, list[DiscGrading]]:
    """``folder/gradings.csv`` by subject, each subject's discs from the caudal end; an empty dict
    when the folder has none."""
    path = Path(folder) / GRADINGS
    if not path.is_file():
        return {}
    out: dict[str, list[DiscGrading]] = {}
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                grading = DiscGrading(row["subject"], int(row["ivd_from_caudal"]), row["level"],
                                      row["disc_herniation"].strip() == "1",
                                      (row.get("disc_bulging") or "").strip() == "1")
                out.setdefault(grading.subject, []).append(grading)
    except (KeyError, ValueError) as err:
        raise StudyError(path, f"not a gradings table (subject, ivd_from_caudal, level, disc_herniation): {err}") from err
    return {s: sorted(g, key=lambda d: d.from_caudal) for s, g in out.items()}


def expert_classes(series: Series, structures: dict[int, str]) -> np.ndarray:
    """The series' expert label as tissue classes the measurement reads: whole-vertebra voxels
    become vertebral body in front of the spinal canal's front wall at their height (in their
    sagittal column, :func:`_canal_front`) and background behind it; other structures map as :func:`lumbarseg.datasets.tissue_target`."""
    from lumbarseg.datasets import tissue_target

    classes = tissue_target(series.label, structures)
    whole = classes == tissues.PARTIAL_CODES["vertebra"]
    if not whole.any():
        return classes
    canal = classes == tissues.tissue_of("dural_sac").index
    if not canal.any():
        raise StudyError(series.source or "series", "whole-vertebra labels without a spinal canal: the body cannot "
                                                    "be told from the posterior elements")
    vertebra_ijk = np.argwhere(whole)
    vertebra_xyz, canal_xyz = series.world(vertebra_ijk), series.world(np.argwhere(canal))
    wall = _canal_front(canal_xyz, vertebra_xyz)
    body = vertebra_xyz[:, 1] > wall
    out = classes.copy()
    out[tuple(vertebra_ijk.T)] = np.where(body, tissues.tissue_of("vertebral_body").index, 0)
    return out


def _wall(heights: np.ndarray, front: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The canal's front wall (RAS y) at heights ``at`` (mm), interpolated over height bins."""
    return np.interp(at / BIN_MM, heights + 0.5, front)


def _front_per_bin(canal_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height bins holding canal and the canal's most anterior y in each."""
    heights, bin_of = np.unique(np.floor(canal_xyz[:, 2] / BIN_MM).astype(int), return_inverse=True)
    front = np.full(len(heights), -np.inf)
    np.maximum.at(front, bin_of.ravel(), canal_xyz[:, 1])
    return heights, front


def _canal_front(canal_xyz: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The spinal canal's front wall (RAS y) at each point's height, taken in the point's own
    sagittal column (left-right bin of :data:`BIN_MM`) where the canal is labelled in that column,
    else the median over the columns' walls at that height. A wall per column, not the most
    anterior canal voxel of the whole height bin: one slice whose canal label reaches forward
    (a lateral recess, a tilted spine) would otherwise cut the back of the body off in every slice."""
    canal_col = np.rint(canal_xyz[:, 0] / BIN_MM).astype(int)
    point_col = np.rint(points[:, 0] / BIN_MM).astype(int)
    columns = np.unique(canal_col)
    heights = np.unique(np.floor(canal_xyz[:, 2] / BIN_MM).astype(int))
    per_column = np.full((len(columns), len(heights)), np.nan)
    wall = np.full(len(points), np.nan)
    for n, col in enumerate(columns):
        h, front = _front_per_bin(canal_xyz[canal_col == col])
        per_column[n] = _wall(h, front, (heights + 0.5) * BIN_MM)
        here = point_col == col
        wall[here] = _wall(h, front, points[here, 2])
    median = np.median(per_column, axis=0)
    rest = np.isnan(wall)
    wall[rest] = _wall(heights, median, points[rest, 2])
    return wall


def discs_from_caudal(report: dict) -> list[dict]:
    """The report's discs, lowest first (by the disc centre's height in patient space)."""
    return sorted(report["levels"], key=lambda level: level["centre_mm"][2])


def score_gradings(report: dict, graded: list[DiscGrading]) -> list[dict]:
    """One row per graded disc: the radiologist's herniation and the report's, the report's disc
    found by name and by order from the caudal end (None where the report has no such disc)."""
    by_name = {level["level"]: level for level in report["levels"] if level["level"]}
    ordered = discs_from_caudal(report)
    rows = []
    for g in graded:
        named = by_name.get(g.level)
        counted = ordered[g.from_caudal - 1] if g.from_caudal <= len(ordered) else None
        rows.append({"level": g.level, "from_caudal": g.from_caudal, "herniated": g.herniated,
                     "by_name": None if named is None else bool(named["herniation"]["present"]),
                     "by_order": None if counted is None else bool(counted["herniation"]["present"]),
                     "confidence": None if counted is None else counted["herniation"].get("confidence"),
                     "name_at_order": None if counted is None else counted["level"]})
    return rows
