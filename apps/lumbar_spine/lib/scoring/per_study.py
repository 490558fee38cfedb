"""What every study scoring method shares: score each unlabelled study with the served model
and store the score in the datastore's image info, with the model version it came from.

A study whose stored score came from another model version (or other settings) is scored again,
so scores follow the served model after retraining; one that is up to date is skipped. The
entry under ``key`` is ``{"score", "model_version", **settings, "ts"}``;
:class:`lib.activelearning.highest_score.HighestScore` ranks by it.
"""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lumbarseg import io
from lumbarseg.io.study import Series, StudyError

from lib.backend import ServedModel

log = logging.getLogger(__name__)


class PerStudyScore(ScoringMethod):
    key = ""  # image info key of the stored entry

    def __init__(self, model: ServedModel, description: str, **settings):
        super().__init__(description)
        self.model = model
        self.settings = settings

    def score(self, series: Series) -> float | None:
        """The study's score, higher meaning more worth labelling; None when there is nothing to score."""
        raise NotImplementedError

    def __call__(self, request, datastore: Datastore) -> dict:
        version = self.model.version
        scored, skipped, failed = {}, 0, {}
        for image_id in datastore.get_unlabeled_images():
            stored = datastore.get_image_info(image_id).get(self.key) or {}
            if stored.get("model_version") == version and all(stored.get(k) == v for k, v in self.settings.items()):
                skipped += 1
                continue
            try:
                study = io.load_study(datastore.get_image_uri(image_id))
            except StudyError as err:  # one unreadable study must not stop the round
                failed[image_id] = str(err)
                continue
            value = self.score(study.primary)
            entry = {"score": 0.0 if value is None else round(value, 5), "model_version": version,
                     **self.settings, "ts": int(time.time())}
            datastore.update_image_info(image_id, {self.key: entry})
            scored[image_id] = entry["score"]
            log.info("%s: %s = %s (model %s)", image_id, self.key, entry["score"], version)
        return {"scored": scored, "up_to_date": skipped, "failed": failed, "model_version": version}
