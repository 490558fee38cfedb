"""One study through a segmenter to what a user gets back: a label map and the findings report.

Every front door (``lumbarseg infer``, the MONAI Label app's infer tasks, ``lumbarseg
evaluate-findings --source model``) calls :func:`analyse`, so post-processing, level naming and
the report are the same whichever backend ran the networks
(:class:`lumbarseg.pipeline.Segmenter` in process, or
:class:`lumbarseg.triton.client.TritonSegmenter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lumbarseg import measure, planes, postprocess
from lumbarseg.io.study import Series, Study
from lumbarseg.pipeline import Segmentation


@dataclass
class Analysis:
    label: np.ndarray  # (I, J, K) uint8 study label values (lumbarseg.tissues.STUDY_LABELS), primary series grid
    affine: np.ndarray  # 4x4 of the primary series
    report: dict  # lumbarseg.measure.study_report
    segmentation: Segmentation


def analyse(study: Study, segment: Callable[[Series], Segmentation], *, plane: str | None = None,
            crop: bool = True) -> Analysis:
    """Segment the study's primary series and turn the result into named levels and findings
    (the primary only: other series of a clinical study, such as its axial stacks, are not
    measured; a manifest study, as ``evaluate-findings`` reads, is one series).

    ``plane``: one of :data:`lumbarseg.planes.PLANES` to return that plane network's own
    answer instead of the fused one (the report then measures that answer too).

    ``crop``: post-process and measure on the box of the tissue the segmentation found (every
    plane's too) plus the reach of the measurements (:func:`crop_pad_mm`) instead of the whole
    field of view: components, level naming and disc frames cost in proportion to the voxels
    they scan, and outside that box every class is background. The report is the same either
    way (voxel and slice indices are given on the whole series; tests/test_spine_region.py
    compares the two)."""
    if plane is not None and plane not in planes.PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {planes.PLANES}")
    series = study.primary
    segmentation = segment(series)
    classes = segmentation.classes if plane is None else segmentation.plane_classes[plane]
    plane_classes = segmentation.fused_plane_classes or None
    box = None
    if crop:
        pad = [int(np.ceil(crop_pad_mm() / s)) + CROP_PAD for s in series.spacing]
        box = tissue_box([classes, *(plane_classes or {}).values()], pad)
    measured = series if box is None else _crop_series(series, box)
    if box is not None:
        classes = classes[box]
        plane_classes = plane_classes and {p: c[box] for p, c in plane_classes.items()}
    single = Study([measured], study.structures, study.subject, study.set, study.source)
    report, findings = measure.study_findings(single, [classes], plane_classes=[plane_classes],
                                              source="model" if plane is None else f"model:{plane}")
    # The levels the report names, on the map they were named on (one series: this one). No
    # findings means a segmentation without any tissue: its label map is empty too.
    label = np.zeros(series.shape, np.uint8)
    if findings is not None:
        label[box or ...] = postprocess.study_label_map(findings.named, findings.levels)
    if box is not None:
        _on_whole_series(report, series, box)
    return Analysis(label, series.affine, report, segmentation)


# Voxels kept around the tissue when cropping, beyond crop_pad_mm: measure's per-disc
# disagreement box pads a disc by 2 voxels.
CROP_PAD = 3


def crop_pad_mm() -> float:
    """How far from the tissue the measurements look (mm): the sections through each disc reach
    half_width_mm to each side, anterior_mm in front and posterior_mm behind its centre. Within
    that reach the crop must hold the whole field of view, since measure tells a point outside
    the series (UNKNOWN: a plane that leaves the field of view) from background."""
    sections = measure.load_config().sections
    return max(sections.half_width_mm, sections.anterior_mm, sections.posterior_mm) + sections.beyond_disc_mm


def tissue_box(maps: list[np.ndarray], pad: int | list[int] = CROP_PAD) -> tuple[slice, ...] | None:
    """The box (one slice per axis) holding every non-background voxel of ``maps`` (same shape)
    plus ``pad`` voxels (per axis, or one for all), or None when there is none or the box is the
    whole grid (nothing to save)."""
    found = np.zeros(maps[0].shape, bool)
    for m in maps:
        found |= m != 0
    if not found.any():
        return None
    box = []
    for axis, n in enumerate(found.shape):
        hit = np.flatnonzero(found.any(axis=tuple(a for a in range(found.ndim) if a != axis)))
        p = pad[axis] if isinstance(pad, list) else pad
        box.append(slice(max(0, int(hit[0]) - p), min(n, int(hit[-1]) + 1 + p)))
    return None if all(b.stop - b.start == n for b, n in zip(box, found.shape)) else tuple(box)


def _crop_series(series: Series, box: tuple[slice, ...]) -> Series:
    """The series on ``box``, its affine moved so every voxel keeps its patient position."""
    affine = series.affine.copy()
    affine[:3, 3] = series.affine[:3, :3] @ np.array([b.start for b in box], float) + series.affine[:3, 3]
    label = None if series.label is None else series.label[box]
    return Series(series.image[(slice(None), *box)], affine, series.modalities, series.description, label,
                  series.source, dict(series.meta))


def _on_whole_series(report: dict, series: Series, box: tuple[slice, ...]) -> None:
    """A report measured on a crop, with the whole series' shape and voxel and slice indices
    (patient-space positions need nothing: the cropped affine keeps them)."""
    start = [b.start for b in box]
    for entry in report.get("series", []):
        entry["shape"] = list(series.shape)
    for level in report.get("levels", []):
        sac = level.get("dural_sac")
        if sac and sac.get("slice") is not None:
            sac["slice"] += start[2]
        for section in level.get("slices", []):
            if section.get("slice") is not None:
                section["slice"] += start[2]
        top = (level.get("herniation") or {}).get("top_point")
        if top:
            if "voxel" in top:
                top["voxel"] = [int(v + s) for v, s in zip(top["voxel"], start)]
            if "pixel" in top:
                top["pixel"] = [int(v + s) for v, s in zip(top["pixel"], start[:2])]
            if top.get("slice") is not None:
                top["slice"] += start[2]
