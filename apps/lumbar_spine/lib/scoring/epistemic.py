"""``epistemic_entropy`` scoring: MC-dropout uncertainty of each unlabelled study
(:func:`lumbarseg.active_learning.epistemic_entropy`), for the ``epistemic`` strategy.

MONAI Label's ``EpistemicScoring`` runs one 3D MONAI network by sliding window; a study here goes
through three 2D plane networks and the 3D fusion, so the served model's own networks are sampled
with dropout on. Always in-process (Triton serves the networks without dropout).
"""

from __future__ import annotations

from lumbarseg.active_learning import epistemic_entropy
from lumbarseg.io.study import Series

from lib.backend import ServedModel
from lib.scoring.per_study import PerStudyScore

KEY = "epistemic_entropy"


class EpistemicEntropy(PerStudyScore):
    key = KEY

    def __init__(self, model: ServedModel, samples: int = 8):
        super().__init__(model, f"MC-dropout entropy of the fused segmentation ({samples} samples)", samples=samples)

    def score(self, series: Series) -> float | None:
        return epistemic_entropy(self.model.segmenter(), series, samples=self.settings["samples"])
