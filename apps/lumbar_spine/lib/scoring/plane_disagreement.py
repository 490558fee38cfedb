"""``plane_disagreement`` scoring: how much the three plane networks disagree on each
unlabelled study, stored in the datastore's image info for the ``disagreement`` strategy.

Each score is stored with the model version it was computed with; a study whose score came
from another version is scored again, so scores follow the served model after retraining.
"""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lumbarseg import disagreement, io
from lumbarseg.io.study import StudyError

from lib.backend import ServedModel

log = logging.getLogger(__name__)
KEY = "plane_disagreement"


class PlaneDisagreement(ScoringMethod):
    def __init__(self, model: ServedModel, definition: str = disagreement.DEFINITION):
        super().__init__(f"Disagreement of the sagittal, coronal and axial networks ({definition})")
        self.model = model
        self.definition = definition

    def __call__(self, request, datastore: Datastore) -> dict:
        version = self.model.version
        scored, skipped, failed = {}, 0, {}
        for image_id in datastore.get_unlabeled_images():
            stored = datastore.get_image_info(image_id).get(KEY) or {}
            if stored.get("model_version") == version and stored.get("definition") == self.definition:
                skipped += 1
                continue
            try:
                study = io.load_study(datastore.get_image_uri(image_id))
            except StudyError as err:  # one unreadable study must not stop the round
                failed[image_id] = str(err)
                continue
            segmentation = self.model.segment(study.primary, with_planes=True)
            value = disagreement.score(segmentation, self.definition)
            entry = {"score": 0.0 if value is None else round(value, 5), "model_version": version,
                     "definition": self.definition, "ts": int(time.time())}
            datastore.update_image_info(image_id, {KEY: entry})
            scored[image_id] = entry["score"]
            log.info("%s: %s = %s (model %s)", image_id, KEY, entry["score"], version)
        return {"scored": scored, "up_to_date": skipped, "failed": failed, "model_version": version}
