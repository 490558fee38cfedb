"""How much the three plane networks disagree on a study: the active-learning score.

Two definitions, both on the planes' outputs for one study:

* ``class_rate``: the share of voxels some plane calls tissue on which the planes' class
  maps are not all the same (0: identical answers; 1: they never agree on tissue);
* ``js_divergence``: the mean generalised Jensen-Shannon divergence (bits) of the planes'
  class probabilities over the same voxels: entropy of the mean minus mean entropy.

``class_rate`` is the one served (:data:`DEFINITION`), chosen by
``scripts/disagreement_experiment.py`` on the 16 labelled studies of the split's ``fusion``
group of ``../shared/data`` (the plane networks never trained on them, the fusion did; never
``holdout``), with ``weights/lite``: Spearman correlation with the ensemble's error (1 - mean
Dice over the annotated classes) is +0.30 (p = 0.26) for ``class_rate`` and +0.04 (p = 0.89)
for ``js_divergence``. ``class_rate`` also leads within sets: +0.83 vs +0.71 on 6 Dixon
vertebra studies, -0.21 vs -0.82 on 7 IVDM3Seg disc crops (sets with at least 4 studies). The
evidence is weak (16 studies, errors 0.08-0.17, no correlation significant overall); figures
and scatter plot: ``docs/al_disagreement_experiment.{json,png}``.
"""

from __future__ import annotations

import numpy as np

DEFINITIONS = ("class_rate", "js_divergence")
DEFINITION = "class_rate"


def class_rate(plane_classes: dict[str, np.ndarray], region: np.ndarray | None = None) -> float | None:
    """Share of tissue voxels (within ``region``) where the planes' classes differ; None when
    no plane finds tissue there or fewer than two planes are given (nothing to disagree)."""
    if len(plane_classes) < 2:
        return None
    stack = np.stack(list(plane_classes.values()))
    if region is not None:
        stack = stack[:, region]
    tissue = (stack > 0).any(axis=0)
    if not tissue.any():
        return None
    return float((stack != stack[:1]).any(axis=0)[tissue].mean())


def js_divergence(plane_probabilities: dict[str, np.ndarray]) -> float | None:
    """Mean Jensen-Shannon divergence (bits) of ``(K, X, Y, Z)`` plane probabilities over the
    voxels some plane calls tissue; None when none does."""
    p = np.stack(list(plane_probabilities.values())).astype(np.float64)  # (P, K, X, Y, Z)
    tissue = (p.argmax(axis=1) > 0).any(axis=0)
    if not tissue.any():
        return None
    p = p[:, :, tissue]

    def entropy(q: np.ndarray) -> np.ndarray:
        return -(q * np.log2(np.clip(q, 1e-12, 1.0))).sum(axis=-2)

    return float((entropy(p.mean(axis=0)) - entropy(p).mean(axis=0)).mean())


def score(segmentation, definition: str = DEFINITION) -> float | None:
    """The study's disagreement under ``definition`` from a :class:`lumbarseg.pipeline.Segmentation`."""
    if definition == "class_rate":
        return class_rate(segmentation.plane_classes)
    if definition == "js_divergence":
        return js_divergence(segmentation.plane_probabilities)
    raise ValueError(f"unknown disagreement definition {definition!r}; expected one of {DEFINITIONS}")
