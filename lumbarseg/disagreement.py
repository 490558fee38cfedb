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

Finer definitions, for ``lumbarseg al-simulate``'s disagreement variants (docs/active_learning.md):

* :func:`class_rates`: ``class_rate`` per tissue class (of the voxels some plane calls that
  class, the share on which not all planes do);
* :func:`disc_level_rates`: ``class_rate`` around each disc the fused segmentation finds (its
  bounding box, widened by half its size each way): one value per level;
* ``class_level`` (:func:`class_level`): the per-class rates weighted by :data:`CLASS_WEIGHTS`
  (discs and dural sac, what findings are measured on, above the rest), averaged with the worst
  disc level: a study whose L5-S1 the planes disagree on outranks one with a noisy edge;
* :func:`error_weighted`: the per-class rates weighted by each class's current held-out error.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lumbarseg import tissues

DEFINITIONS = ("class_rate", "js_divergence", "class_level")
DEFINITION = "class_rate"
# Weight of a class's disagreement in ``class_level``: the tissues findings are measured on
# (disc height and herniation, dural sac stenosis) count twice, the vertebral body once, the
# rest (small, often noisy edges) half.
CLASS_WEIGHTS = {"disc": 2.0, "dural_sac": 2.0, "vertebral_body": 1.0}
OTHER_WEIGHT = 0.5
# A disc component smaller than this share of the largest one is noise, not a level.
LEVEL_MIN_SHARE = 0.1


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


def class_rates(plane_classes: dict[str, np.ndarray]) -> dict[str, float]:
    """Per tissue class (background aside) some plane predicts: the share of the voxels some
    plane calls that class on which not every plane does."""
    stack = np.stack(list(plane_classes.values())).reshape(len(plane_classes), -1)
    rates = {}
    for k in range(1, tissues.NUM_TISSUES):
        said = stack == k
        anyone = said.any(axis=0)
        if anyone.any():
            rates[tissues.TISSUE_NAMES[k]] = float((~said[:, anyone].all(axis=0)).mean())
    return rates


def disc_level_rates(plane_classes: dict[str, np.ndarray], fused: np.ndarray) -> list[float]:
    """``class_rate`` around each disc of the fused class map ``fused`` (same grid as the plane
    maps): within the disc component's bounding box widened by half its size on every side,
    so the neighbouring endplates and the canal behind it count. Components smaller than
    :data:`LEVEL_MIN_SHARE` of the largest are left out; superior to inferior is not implied."""
    components, n = ndimage.label(fused == tissues.TISSUE_NAMES.index("disc"))
    if not n:
        return []
    sizes = np.bincount(components.ravel())[1:]
    rates = []
    for index, box in enumerate(ndimage.find_objects(components)):
        if sizes[index] < LEVEL_MIN_SHARE * sizes.max():
            continue
        wide = tuple(slice(max(0, b.start - (b.stop - b.start) // 2), b.stop + (b.stop - b.start) // 2) for b in box)
        rate = class_rate({p: c[wide] for p, c in plane_classes.items()})
        if rate is not None:
            rates.append(rate)
    return rates


def weighted(rates: dict[str, float], weights: dict[str, float], default: float = 0.0) -> float | None:
    """Weighted mean of per-class rates (a class missing from ``weights`` weighs ``default``);
    None when no class with a positive weight is present."""
    w = np.array([weights.get(c, default) for c in rates], float)
    if not rates or w.sum() <= 0:
        return None
    return float(np.dot(w, list(rates.values())) / w.sum())


def class_level(segmentation) -> float | None:
    """The ``class_level`` definition: the mean of the :data:`CLASS_WEIGHTS`-weighted per-class
    rates and the worst disc level's rate (the weighted rates alone when no disc is found)."""
    by_class = weighted(class_rates(segmentation.plane_classes), CLASS_WEIGHTS, OTHER_WEIGHT)
    if by_class is None:
        return None
    levels = disc_level_rates(segmentation.plane_classes, segmentation.classes)
    return by_class if not levels else 0.5 * (by_class + max(levels))


def error_weighted(segmentation, errors: dict[str, float]) -> float | None:
    """Per-class rates weighted by ``errors`` (class -> the current model's held-out error,
    1 - Dice); classes with no held-out error weigh nothing. Falls back to ``class_rate``
    when no error is known yet."""
    rates = class_rates(segmentation.plane_classes)
    if not errors:
        return class_rate(segmentation.plane_classes)
    value = weighted(rates, errors)
    return 0.0 if value is None and rates else value


def reads_probabilities(definition: str) -> bool:
    """Whether ``definition`` reads the planes' probabilities, not only their class maps."""
    return definition == "js_divergence"


def score(segmentation, definition: str = DEFINITION) -> float | None:
    """The study's disagreement under ``definition`` from a :class:`lumbarseg.pipeline.Segmentation`."""
    if definition == "class_rate":
        return class_rate(segmentation.plane_classes)
    if definition == "js_divergence":
        return js_divergence(segmentation.plane_probabilities)
    if definition == "class_level":
        return class_level(segmentation)
    raise ValueError(f"unknown disagreement definition {definition!r}; expected one of {DEFINITIONS}")
