"""``plane_disagreement`` scoring: how much the three plane networks disagree on each
unlabelled study (:func:`lumbarseg.disagreement.score`), for the ``disagreement`` strategy."""

from __future__ import annotations

from lumbarseg import disagreement
from lumbarseg.io.study import Series

from lib.backend import ServedModel
from lib.scoring.per_study import PerStudyScore

KEY = "plane_disagreement"


class PlaneDisagreement(PerStudyScore):
    key = KEY

    def __init__(self, model: ServedModel, definition: str = disagreement.DEFINITION):
        super().__init__(model, f"Disagreement of the sagittal, coronal and axial networks ({definition})",
                         definition=definition)

    def score(self, series: Series) -> float | None:
        definition = self.settings["definition"]
        segmentation = self.model.segment(series, probabilities=disagreement.reads_probabilities(definition))
        return disagreement.score(segmentation, definition)
