"""One TaskConfig per model: the three plane networks and the fused ensemble (``lumbar_spine``).

All four share one :class:`lib.backend.ServedModel` (passed to :meth:`init` as ``model``), so
a retrained model reaches every task at once.
"""

from __future__ import annotations

from pathlib import Path

from monailabel.interfaces.config import TaskConfig

from lib.activelearning.highest_score import HighestScore
from lib.infers.segment import LABELS, SegmentLumbarSpine
from lib.scoring import epistemic, plane_disagreement
from lib.trainers.retrain import Retrain


class _Config(TaskConfig):
    plane: str | None = None
    networks: tuple[str, ...] = ()
    description = ""

    def init(self, name: str, model_dir: str, conf: dict, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.model = kwargs["model"]
        self.labels = LABELS
        self.path = [str(self.model.folder)]

    def infer(self) -> SegmentLumbarSpine:
        return SegmentLumbarSpine(self.model, plane=self.plane, description=self.description)

    def trainer(self) -> Retrain:
        return Retrain(self.model, Path(self.model_dir) / "runs", networks=self.networks,
                       preset=self.conf.get("train_preset", "finetune"))


class PlaneConfig(_Config):
    def __init__(self, plane: str):
        super().__init__()
        self.plane = plane
        self.networks = (plane,)
        self.description = f"The {plane} plane network alone, slice by slice (2D)"


class LumbarSpineConfig(_Config):
    networks = ("sagittal", "coronal", "axial", "fusion")
    description = ("Lumbar spine: three plane networks fused by a learned 3D ensemble; discs and bodies named "
                   "by level, with the findings report (dural sac, herniation, stenosis)")

    def strategy(self) -> dict:
        return {"disagreement": HighestScore(plane_disagreement.KEY, "plane disagreement"),
                "epistemic": HighestScore(epistemic.KEY, "MC-dropout entropy")}

    def scoring_method(self) -> dict:
        return {plane_disagreement.KEY: plane_disagreement.PlaneDisagreement(self.model),
                epistemic.KEY: epistemic.EpistemicEntropy(self.model)}
