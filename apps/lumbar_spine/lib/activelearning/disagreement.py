"""``disagreement`` strategy: the unlabelled study the plane networks disagree on most.

Scores come from the ``plane_disagreement`` scoring method (image info ``plane_disagreement``).
A study served within the last ``reset`` seconds is passed over, so two annotators asking at
once get different studies; when every scored study was served recently, the one served
longest ago is next. Unscored studies come last.
"""

from __future__ import annotations

import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.scoring.plane_disagreement import KEY


class Disagreement(Strategy):
    def __init__(self, reset: int = 3600):
        super().__init__("Highest plane disagreement first (unlabelled studies, not served recently)")
        self.reset = reset

    def __call__(self, request, datastore: Datastore) -> dict | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        now = int(time.time())
        strategy = request.get("strategy", "disagreement")

        def rank(image_id: str) -> tuple[bool, float, int]:
            info = datastore.get_image_info(image_id)
            served = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
            score = (info.get(KEY) or {}).get("score", -1.0)
            return now - served >= self.reset, score, -served  # fresh first, then score, then oldest served

        chosen = max(images, key=rank)
        return {"id": chosen, KEY: datastore.get_image_info(chosen).get(KEY)}
