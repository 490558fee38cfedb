"""``disagreement`` and ``epistemic`` strategies: the unlabelled study with the highest stored score.

Scores come from a scoring method (:mod:`lib.scoring`): image info ``plane_disagreement`` or
``epistemic_entropy``. A study served within the last ``reset`` seconds is passed over, so two
annotators asking at once get different studies; when every scored study was served recently,
the one served longest ago is next. Unscored studies come last.
"""

from __future__ import annotations

import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy


class HighestScore(Strategy):
    def __init__(self, key: str, what: str, reset: int = 3600):
        super().__init__(f"Highest {what} first (unlabelled studies, not served recently)")
        self.key = key
        self.reset = reset

    def __call__(self, request, datastore: Datastore) -> dict | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        now = int(time.time())
        strategy = request.get("strategy")

        def rank(image_id: str) -> tuple[bool, float, int]:
            info = datastore.get_image_info(image_id)
            served = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
            score = (info.get(self.key) or {}).get("score", -1.0)
            return now - served >= self.reset, score, -served  # fresh first, then score, then oldest served

        chosen = max(images, key=rank)
        return {"id": chosen, self.key: datastore.get_image_info(chosen).get(self.key)}
