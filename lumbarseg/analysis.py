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


def analyse(study: Study, segment: Callable[[Series], Segmentation], *, plane: str | None = None) -> Analysis:
    """Segment the study's primary series and turn the result into named levels and findings
    (the primary only: other series of a clinical study, such as its axial stacks, are not
    measured; a manifest study, as ``evaluate-findings`` reads, is one series).

    ``plane``: one of :data:`lumbarseg.planes.PLANES` to return that plane network's own
    answer instead of the fused one (the report then measures that answer too)."""
    if plane is not None and plane not in planes.PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {planes.PLANES}")
    series = study.primary
    segmentation = segment(series)
    classes = segmentation.classes if plane is None else segmentation.plane_classes[plane]
    single = Study([series], study.structures, study.subject, study.set, study.source)
    report, findings = measure.study_findings(single, [classes], plane_classes=[segmentation.fused_plane_classes or None],
                                              source="model" if plane is None else f"model:{plane}")
    # The levels the report names, on the map they were named on (one series: this one). No
    # findings means a segmentation without any tissue: its label map is empty too.
    label = (np.zeros(classes.shape, np.uint8) if findings is None
             else postprocess.study_label_map(findings.named, findings.levels))
    return Analysis(label, series.affine, report, segmentation)
