"""``random`` strategy: MONAI Label's, without its 500.

MONAI Label 0.8.5 weights each unlabelled study by the seconds since the strategy last served
it and draws with :func:`random.choices`; when every candidate was served within the current
second (two annotators asking at once, or one study left) all weights are 0 and the request
fails with ``ValueError: Total of weights must be greater than zero`` (HTTP 500). Here every
weight is at least 1: the same preference for studies not served recently, and an answer.
"""

from __future__ import annotations

import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.random import Random as MonaiRandom


class Random(MonaiRandom):
    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request.get("strategy", "random")
        now = int(time.time())
        served = [datastore.get_image_info(i).get("strategy", {}).get(strategy, {}).get("ts", 0) for i in images]
        weights = [max(1, now - ts) for ts in served]
        chosen = random.choices(range(len(images)), weights=weights)[0]
        return {"id": images[chosen], "weight": weights[chosen]}
