"""Active-learning simulation (``lumbarseg al-simulate``): does picking studies by plane
disagreement beat picking them at random?

The pool is the ``train`` and ``fusion`` groups of the split (sets the split does not name are
pool too); the ``holdout`` group is never picked and is where every round is evaluated. A
seeded draw of ``initial`` pool studies starts labelled (the same draw for every strategy).
Round 0 trains a model on them: from scratch with the round preset, or fine-tuning
``init_weights``. Each later round scores the unlabelled pool (or a seeded sample of
``candidates`` of it) with the current model, picks the ``per_round`` best by the strategy,
reveals their labels, fine-tunes the current model on all labelled studies (the way the MONAI
Label app's train task fine-tunes the served model) and evaluates on the holdout: Dice per
class over holdout studies that annotate it (``disc``, ``vertebral_body``, ``dural_sac`` and
their mean are what the curves show), per study, and per set and class.

Fine-tuning must not forget (issue 15): a later round fine-tunes with its own preset
(``finetune_preset``, default ``al_finetune``: a lower learning rate than from-scratch
training, slices centred on a voxel of a class the study labels, fusion patches drawn set by
set) on every labelled study (replay), and the fusion learns on a study of every labelled set
(:func:`fusion_group`), so no class is left to the fusion's drift.
:func:`forgotten` flags, in the curve (``forgotten``) and the log, a class whose holdout Dice
falls from above :data:`HAD` to below :data:`LOST` between consecutive rounds.

Strategies (:data:`STRATEGIES`; each scores with the previous round's model):

* ``random``: a seeded uniform draw;
* ``disagreement``: :func:`lumbarseg.disagreement.score` (``class_rate``, the definition the
  app serves), highest first: the app's ``disagreement`` strategy, K at a time;
* ``disagreement_level``: :func:`lumbarseg.disagreement.class_level`: per-class rates, discs
  and dural sac weighted above the rest, averaged with the worst disc level;
* ``disagreement_error``: :func:`lumbarseg.disagreement.error_weighted`: per-class rates
  weighted by each class's held-out error (1 - Dice) in the previous round;
* ``disagreement_diverse``: the app's score (as ``disagreement``), picked greedily with a
  penalty for a candidate of the same set whose per-class profile is close to one already
  picked this round or labelled (:func:`choose_diverse`);
* ``epistemic``: MC-dropout entropy (:func:`epistemic_entropy`). MONAI Label's own
  ``EpistemicScoring`` cannot score these models: it runs one MONAI 3D network by sliding-window
  inference, whereas a study here goes through three 2D plane networks and the 3D fusion.

Labelled studies train the planes, except those :func:`round_split` puts in the ``fusion``
group: the fusion learns on out-of-fold plane predictions, as in full training, and on
in-sample ones of a set's only labelled study (:func:`fusion_group`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lumbarseg import disagreement, tissues
from lumbarseg.evaluation import study_dice
from lumbarseg.io import manifest
from lumbarseg.io.study import Study, StudyError
from lumbarseg.pipeline import Segmenter, segment_series
from lumbarseg.training import GROUPS, UNSEEN, TrainingPreset, group_of, load_split, train

STRATEGIES = ("random", "disagreement", "disagreement_level", "disagreement_error", "disagreement_diverse",
              "epistemic")
# The classes the real sets label (SPIDER's spinal canal is the dural sac); "mean" is their mean.
REPORTED = ("disc", "vertebral_body", "dural_sac")
HAD, LOST = 0.05, 0.02  # a class "forgotten": holdout Dice above HAD in a round, below LOST in the next
DIVERSITY = 0.5  # disagreement_diverse: penalty (in rank-score units) for a near-identical study
PROFILE_SCALE = 0.2  # profiles this far apart (Euclidean, per-class rates) count as different
log = logging.getLogger("lumbarseg.al")


class ActiveLearningError(ValueError):
    """Bad simulation settings (strategy, sizes)."""


def forgotten(previous: dict[str, float], current: dict[str, float]) -> list[str]:
    """Classes (not ``mean``) whose holdout Dice was above :data:`HAD` in ``previous`` and is
    below :data:`LOST` (or gone) in ``current``: the round lost them, a bug of the round."""
    return sorted(c for c, d in previous.items()
                  if c != "mean" and d > HAD and not current.get(c, 0.0) >= LOST)


def by_set(per_study: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean Dice per class within each set of ``per_study`` (keys ``set/subject``)."""
    sets: dict[str, list[dict[str, float]]] = {}
    for key, dice in per_study.items():
        sets.setdefault(key.split("/")[0], []).append(dice)
    return {name: {c: float(np.mean([d[c] for d in rows if c in d])) for c in sorted({c for d in rows for c in d})}
            for name, rows in sorted(sets.items())}


def summarise(per_study: list[dict[str, float]]) -> dict[str, float]:
    """Mean Dice per class over studies (each class over the studies that annotate it), plus
    ``mean``: the mean of the :data:`REPORTED` classes present."""
    classes = sorted({c for d in per_study for c in d})
    out = {c: float(np.mean([d[c] for d in per_study if c in d])) for c in classes}
    reported = [out[c] for c in REPORTED if c in out]
    out["mean"] = float(np.mean(reported)) if reported else float("nan")
    return out


class _MCDropout(nn.Module):
    """A network whose dropout stays on in eval mode; batch norm keeps its running statistics."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> "_MCDropout":
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def epistemic_entropy(segmenter: Segmenter, series, samples: int = 8, seed: int = 0) -> float | None:
    """MC-dropout uncertainty of a study: the plane networks run ``samples`` times with dropout
    on, each run is fused; the score is the mean voxel entropy (bits) of the mean fused
    probability over the voxels it calls tissue (None when it finds no tissue)."""
    if samples < 2:
        raise ActiveLearningError(f"epistemic scoring needs at least 2 MC-dropout samples, got {samples}")
    mc = Segmenter({p: _MCDropout(m) for p, m in segmenter.plane_models.items()}, segmenter.fusion,
                   segmenter.spacing, segmenter.info)
    torch.manual_seed(seed)

    def mean_of_samples(image: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        fused = sum(mc.predict(image)[1] for _ in range(samples)) / samples
        return {}, fused

    p = segment_series(series, segmenter.spacing, mean_of_samples).probabilities.astype(np.float64)
    tissue = p.argmax(axis=0) > 0
    if not tissue.any():
        return None
    entropy = -(p * np.log2(np.clip(p, 1e-12, 1.0))).sum(axis=0)
    return float(entropy[tissue].mean())


def choose(strategy: str, candidates: list[str], k: int, scores: dict[str, float] | None,
           rng: np.random.Generator, profiles: dict[str, dict[str, float]] | None = None,
           labelled: list[str] = ()) -> list[str]:
    """The ``k`` studies to label next: a seeded draw (``random``), greedy with a diversity
    penalty (``disagreement_diverse``, :func:`choose_diverse`), else highest score first (ties
    by name)."""
    if strategy == "random":
        return [candidates[i] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]
    if strategy == "disagreement_diverse":
        return choose_diverse(candidates, k, scores, profiles or {}, labelled)
    return sorted(candidates, key=lambda key: (-scores[key], key))[:k]


def similarity(a: str, b: str, profiles: dict[str, dict[str, float]]) -> float:
    """How near-identical two studies look to the model, 0..1: 0 across sets; within a set,
    1 - (distance of their per-class disagreement profiles) / :data:`PROFILE_SCALE`, at least 0."""
    if a.split("/")[0] != b.split("/")[0]:
        return 0.0
    pa, pb = profiles.get(a, {}), profiles.get(b, {})
    distance = float(np.sqrt(sum((pa.get(c, 0.0) - pb.get(c, 0.0)) ** 2 for c in {*pa, *pb})))
    return max(0.0, 1.0 - distance / PROFILE_SCALE)


def choose_diverse(candidates: list[str], k: int, scores: dict[str, float],
                   profiles: dict[str, dict[str, float]], labelled: list[str] = ()) -> list[str]:
    """Greedy picks by rank score (the best candidate 1, the worst 0) minus :data:`DIVERSITY`
    times the candidate's highest :func:`similarity` to a study picked before it this round or
    already labelled: of two near-identical studies of one set, the second waits."""
    order = sorted(candidates, key=lambda key: (-scores[key], key))
    rank = {key: 1.0 - i / max(1, len(order) - 1) for i, key in enumerate(order)}
    picked: list[str] = []
    for _ in range(k):
        def value(key: str) -> float:
            near = max((similarity(key, other, profiles) for other in (*picked, *labelled)), default=0.0)
            return rank[key] - DIVERSITY * near
        best = max((c for c in order if c not in picked), key=lambda key: (value(key), rank[key]))
        picked.append(best)
    return picked


def fusion_group(labelled: list[str]) -> tuple[set[str], set[str]]:
    """Which labelled studies the fusion learns on (set-aware, so it sees every labelled class):
    out of fold, within each set, every 4th of its labelled studies in labelling order, and of a
    set with at least two labelled and none of them picked so, its last; in sample, a set's
    only labelled study, which the planes need more but without which the fusion never sees
    the classes only that set labels and forgets them (issue 15: random seed 2 lost the dural
    sac when SPIDER's one study trained only the planes). Returns (out of fold, in sample)."""
    sets: dict[str, list[str]] = {}
    for key in labelled:
        sets.setdefault(key.split("/")[0], []).append(key)
    out_of_fold, in_sample = set(), set()
    for keys in sets.values():
        if len(keys) == 1:
            in_sample.add(keys[0])
        else:
            out_of_fold |= set(keys[3::4]) or {keys[-1]}
    return out_of_fold, in_sample


def round_split(entries: list[manifest.ManifestEntry], labelled: list[str]) -> dict:
    """Training groups for a round: labelled studies train the planes, :func:`fusion_group` the
    fusion (its in-sample studies both); every other study (unlabelled pool, holdout) is
    ``holdout``, i.e. unread."""
    out_of_fold, in_sample = fusion_group(labelled)
    split: dict[str, dict[str, list[str]]] = {}
    for e in entries:
        groups = split.setdefault(e.set, {g: [] for g in GROUPS})
        if e.key not in labelled:
            groups["holdout"].append(e.subject)
        else:
            groups["fusion" if e.key in out_of_fold else "train"].append(e.subject)
            if e.key in in_sample:
                groups["fusion"].append(e.subject)
    for e in entries:  # group_of is what training reads: it must see each study where we put it
        if group_of(e, split) == UNSEEN:
            raise StudyError(e.image.parent, f"set {e.set!r} is split by a unit larger than one study "
                                             "(configs/data/split.json); active learning picks single "
                                             "studies, so leave that set out")
    return split


def _run_name(r: int, preset: TrainingPreset, init: Path | None, split: dict) -> str:
    """``round_<r>_<hash>`` of what a round trains on (its :func:`round_split`) and from:
    strategies sharing a work folder share their identical first round, and a rerun resumes
    only the same training."""
    what = json.dumps([asdict(preset), None if init is None else str(Path(init).resolve()), split])
    return f"round_{r}_{hashlib.sha256(what.encode()).hexdigest()[:10]}"


def score_candidates(strategy: str, segmenter: Segmenter, candidates: list[str], series_of, *,
                     errors: dict[str, float] | None = None, mc_samples: int = 8,
                     seed: int = 0) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Scores of ``candidates`` (keys; ``series_of(key)``: the study's primary series) under a
    strategy, and per study its per-class disagreement profile (``disagreement_diverse`` only).
    A study where the model finds no tissue scores 0, as the app's scoring stores it."""
    scores: dict[str, float] = {}
    profiles: dict[str, dict[str, float]] = {}
    for key in candidates:
        if strategy == "epistemic":
            scores[key] = epistemic_entropy(segmenter, series_of(key), mc_samples, seed) or 0.0
            continue
        segmentation = segmenter.segment(series_of(key))
        if strategy == "disagreement_level":
            value = disagreement.class_level(segmentation)
        elif strategy == "disagreement_error":
            value = disagreement.error_weighted(segmentation, errors or {})
        else:  # disagreement, disagreement_diverse: the app's definition
            value = disagreement.score(segmentation)
            if strategy == "disagreement_diverse":
                profiles[key] = disagreement.class_rates(segmentation.plane_classes)
        scores[key] = value or 0.0
    return scores, profiles


def holdout_errors(dice: dict[str, float]) -> dict[str, float]:
    """``disagreement_error``'s class weights: 1 - holdout Dice of each scored tissue class."""
    return {c: 1.0 - d for c, d in dice.items() if c in tissues.TISSUE_NAMES and np.isfinite(d)}


def _holdout_dice(path: Path, segmenter: Segmenter, holdout: list[manifest.ManifestEntry], study) -> dict:
    """Dice per class of every holdout study, stored in the round's folder (``path``): a
    round's model is fixed by its folder name (:func:`_run_name`), so the strategies sharing a
    round 0, and a rerun, evaluate it once."""
    keys = [e.key for e in holdout]
    if path.is_file():
        stored = json.loads(path.read_text())
        if set(stored) == set(keys):
            return {k: stored[k] for k in keys}
    per_study = {k: study_dice(segmenter.segment(study(k).primary).classes, study(k)) for k in keys}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(per_study))
    tmp.replace(path)
    return per_study


def simulate(data_dirs: list[Path], strategy: str, rounds: int, per_round: int, work: Path, *,
             initial: int = 3, preset: str = "al_round", finetune_preset: str = "al_finetune",
             init_weights: Path | None = None, seed: int = 0, mc_samples: int = 8,
             candidates: int | None = None, split: dict | None = None) -> dict:
    """Run the simulation; returns the curve (see :func:`save_curve`). Round 0 trains with
    ``preset`` (``finetune_preset`` when it starts from ``init_weights``), later rounds
    fine-tune with ``finetune_preset``; ``candidates``: score only a seeded sample of this many
    unlabelled studies per round (None: all). Round models go to ``work/round_<r>_<hash>/``
    (see :func:`_run_name`)."""
    if strategy not in STRATEGIES:
        raise ActiveLearningError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if rounds < 0 or per_round < 1 or initial < 2:
        raise ActiveLearningError(f"need rounds >= 0, per-round >= 1 and initial >= 2 (one study trains the "
                                  f"planes, one the fusion); got {rounds}, {per_round}, {initial}")
    if candidates is not None and candidates < per_round:
        raise ActiveLearningError(f"--candidates {candidates} is fewer than the {per_round} studies a round picks")
    split = load_split() if split is None else split
    entries = [e for d in data_dirs for e in manifest.read_manifest(d) if e.label is not None]
    pool = sorted(e.key for e in entries if group_of(e, split) in ("train", "fusion"))
    holdout = [e for e in entries if group_of(e, split) == "holdout"]
    if not holdout:
        raise StudyError(", ".join(map(str, data_dirs)), "no holdout studies to evaluate on: the split names no "
                                                         "holdout subject of these sets (give a split that does)")
    needed = initial + rounds * per_round
    if needed > len(pool):
        raise ActiveLearningError(f"{initial} initial + {rounds} rounds x {per_round} studies = {needed} "
                                  f"studies, but the pool has only {len(pool)}")
    by_key = {e.key: e for e in entries}
    studies: dict[str, Study] = {}

    def study(key: str) -> Study:
        if key not in studies:
            studies[key] = manifest.load_entry(by_key[key])
        return studies[key]

    presets = {"first": TrainingPreset.load(finetune_preset if init_weights else preset),
               "later": TrainingPreset.load(finetune_preset)}
    work.mkdir(parents=True, exist_ok=True)
    (work / "cache").mkdir(exist_ok=True)
    labelled = [pool[i] for i in sorted(np.random.default_rng([seed, 0]).choice(len(pool), initial, replace=False))]
    curve = {"strategy": strategy, "data": [str(d) for d in data_dirs], "preset": preset,
             "finetune_preset": finetune_preset,
             "init_weights": None if init_weights is None else str(init_weights), "seed": seed,
             "initial": initial, "per_round": per_round, "pool_size": len(pool), "candidates": candidates,
             "holdout": [e.key for e in holdout], "rounds": [], "forgotten": []}
    if strategy == "epistemic":
        curve["mc_samples"] = mc_samples
    if strategy.startswith("disagreement"):
        curve["definition"] = {"disagreement": disagreement.DEFINITION, "disagreement_diverse": disagreement.DEFINITION,
                               "disagreement_level": "class_level",
                               "disagreement_error": "error_weighted"}[strategy]
    model, chosen, scores, dice = init_weights, list(labelled), None, {}
    for r in range(rounds + 1):
        began = time.perf_counter()
        if r:
            unlabelled = [k for k in pool if k not in labelled]
            if candidates is not None and candidates < len(unlabelled):
                draw = np.random.default_rng([seed, 2, r]).choice(len(unlabelled), candidates, replace=False)
                unlabelled = [unlabelled[i] for i in sorted(draw)]
            scores, profiles = (None, None) if strategy == "random" else score_candidates(
                strategy, segmenter, unlabelled, lambda k: study(k).primary, errors=holdout_errors(dice),
                mc_samples=mc_samples, seed=seed)
            chosen = choose(strategy, unlabelled, per_round, scores, np.random.default_rng([seed, 1, r]),
                            profiles, labelled)
            labelled += chosen
        round_preset = presets["later" if r else "first"]
        groups = round_split(entries, labelled)
        out = work / _run_name(r, round_preset, model, groups)
        if not (out / "cache").exists():
            out.mkdir(parents=True, exist_ok=True)
            (out / "cache").symlink_to((work / "cache").resolve(), target_is_directory=True)
        model = train(round_preset, data_dirs, out, init=model, split=groups)
        segmenter = Segmenter.load(model)
        per_study = _holdout_dice(out / "holdout_dice.json", segmenter, holdout, study)
        previous, dice = dice, summarise(list(per_study.values()))
        lost = forgotten(previous, dice) if r else []
        out_of_fold, in_sample = fusion_group(labelled)
        curve["rounds"].append({
            "round": r, "n_labelled": len(labelled), "chosen": chosen, "model": str(model),
            "preset": finetune_preset if r or init_weights else preset,
            "fusion_group": sorted(out_of_fold), "fusion_in_sample": sorted(in_sample),
            "scores": None if scores is None else {k: round(v, 5) for k, v in sorted(scores.items())},
            "dice": dice, "dice_by_set": by_set(per_study), "holdout_dice": per_study, "forgotten": lost,
            "seconds": round(time.perf_counter() - began, 1),
        })
        curve["forgotten"] += [{"round": r, "class": c, "before": previous[c], "after": dice.get(c)} for c in lost]
        log.info("%s seed %d round %d/%d: %d labelled (+%s)  holdout Dice %s  (%.0f s)", strategy, seed, r, rounds,
                 len(labelled), ", ".join(chosen), " ".join(f"{c}={dice[c]:.3f}" for c in (*REPORTED, "mean")
                                                             if c in dice), curve["rounds"][-1]["seconds"])
        for c in lost:
            log.warning("FORGOTTEN: %s seed %d round %d lost %s: holdout Dice %.3f -> %.3f", strategy, seed, r, c,
                        previous[c], dice.get(c, 0.0))
    return curve


def save_curve(curve: dict, path: Path) -> None:
    """``path`` (JSON) and the plot beside it (same name, ``.png``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(curve, indent=1))
    plot_curves([curve], path.with_suffix(".png"))


def load_curve(path: Path) -> dict:
    try:
        curve = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise StudyError(path, f"not a curve JSON: {err}") from None
    if not isinstance(curve, dict) or "strategy" not in curve or not curve.get("rounds"):
        raise StudyError(path, "not a curve JSON written by al-simulate (no strategy or rounds)")
    return curve


def mean_curves(curves: list[dict], cls: str = "mean") -> dict[str, dict]:
    """Curves grouped by strategy and averaged over their seeds: per strategy the labelled-study
    counts, the mean ``cls`` Dice at each, its min and max over seeds, and the seeds. Curves of
    one strategy must share their labelled-study counts (same initial size, rounds, K)."""
    grouped: dict[str, list[dict]] = {}
    for curve in curves:
        grouped.setdefault(curve["strategy"], []).append(curve)
    out = {}
    for strategy, group in grouped.items():
        counts = [[r["n_labelled"] for r in c["rounds"]] for c in group]
        if any(c != counts[0] for c in counts):
            raise ActiveLearningError(f"{strategy} curves differ in labelled-study counts {counts}; "
                                      "average only runs with the same --initial, --rounds and --per-round")
        dice = np.array([[r["dice"].get(cls, np.nan) for r in c["rounds"]] for c in group])
        out[strategy] = {"n_labelled": counts[0], "dice": dice.mean(axis=0).tolist(),
                         "min": dice.min(axis=0).tolist(), "max": dice.max(axis=0).tolist(),
                         "sd": dice.std(axis=0).tolist(), "seeds": sorted(c["seed"] for c in group)}
    return out


def labels_needed(n_labelled: list[int], dice: list[float], target: float) -> float | None:
    """Labelled studies at which a curve first reaches ``target`` Dice, linearly interpolated
    between rounds (None if it never does)."""
    for i, (n, d) in enumerate(zip(n_labelled, dice)):
        if d >= target:
            if i == 0:
                return float(n)
            n0, d0 = n_labelled[i - 1], dice[i - 1]
            return float(n0 + (target - d0) / (d - d0) * (n - n0))
    return None


def label_ratio(curves: list[dict], strategy: str = "disagreement", baseline: str = "random",
                cls: str = "mean") -> dict:
    """The issue's benchmark on seed-averaged curves: labelled studies ``strategy`` needs to reach
    the Dice ``baseline`` reaches with all its rounds, over the labelled studies ``baseline``
    used (< 1: fewer labels). Also the same per seed, for the spread."""
    means = mean_curves(curves, cls)
    missing = {strategy, baseline} - set(means)
    if missing:
        raise ActiveLearningError(f"no {sorted(missing)} curve to compare")

    def ratio(ours: dict, theirs: dict) -> tuple[float, float | None, float | None]:
        target, n_all = theirs["dice"][-1], theirs["n_labelled"][-1]
        needed = labels_needed(ours["n_labelled"], ours["dice"], target)
        return target, needed, None if needed is None else needed / n_all

    target, needed, mean_ratio = ratio(means[strategy], means[baseline])
    per_seed = {}
    by_seed = {(c["strategy"], c["seed"]): c for c in curves}
    for seed in sorted(set(means[strategy]["seeds"]) & set(means[baseline]["seeds"])):
        one = {k: {"n_labelled": [r["n_labelled"] for r in by_seed[(k, seed)]["rounds"]],
                   "dice": [r["dice"].get(cls, np.nan) for r in by_seed[(k, seed)]["rounds"]]}
               for k in (strategy, baseline)}
        per_seed[seed] = ratio(one[strategy], one[baseline])[2]
    return {"class": cls, "strategy": strategy, "baseline": baseline, "seeds": means[strategy]["seeds"],
            "baseline_final_dice": target, "baseline_labelled": means[baseline]["n_labelled"][-1],
            "labelled_to_reach_it": needed, "ratio": mean_ratio, "ratio_per_seed": per_seed,
            "curves": means}


def below_by_more_than_spread(curves: list[dict], strategy: str, other: str = "epistemic",
                              cls: str = "mean") -> list[int]:
    """Labelled-study counts at which ``strategy``'s seed-mean ``cls`` Dice is below ``other``'s
    by more than the seeds' spread (the larger of the two standard deviations over seeds)."""
    means = mean_curves(curves, cls)
    a, b = means[strategy], means[other]
    if a["n_labelled"] != b["n_labelled"]:
        raise ActiveLearningError(f"{strategy} and {other} curves differ in labelled-study counts")
    return [n for n, da, db, sa, sb in zip(a["n_labelled"], a["dice"], b["dice"], a["sd"], b["sd"])
            if db - da > max(sa, sb)]


def compare(curves: list[dict]) -> dict:
    """The benchmark summary (``al-simulate --compare --summary``): per reported class and the
    mean, every strategy's seed-averaged curve; per strategy other than ``random`` its
    :func:`label_ratio` against ``random``; per disagreement variant the counts at which it is
    below ``epistemic`` by more than the seeds' spread; every forgotten class of every run."""
    strategies = sorted({c["strategy"] for c in curves})
    out: dict = {"strategies": strategies, "seeds": {s: mean_curves(curves)[s]["seeds"] for s in strategies},
                 "curves": {cls: mean_curves(curves, cls) for cls in (*REPORTED, "mean")},
                 "label_ratio": {}, "below_epistemic": {},
                 "forgotten": [{"strategy": c["strategy"], "seed": c["seed"], **f}
                               for c in curves for f in c.get("forgotten", [])]}
    for strategy in strategies:
        if strategy != "random" and "random" in strategies:
            ratio = label_ratio(curves, strategy, "random")
            out["label_ratio"][strategy] = {k: v for k, v in ratio.items() if k != "curves"}
        if strategy.startswith("disagreement") and "epistemic" in strategies:
            out["below_epistemic"][strategy] = below_by_more_than_spread(curves, strategy)
    return out


def plot_curves(curves: list[dict], path: Path) -> None:
    """Holdout Dice against the number of labelled studies, one panel per reported class and
    their mean: one line per strategy, the mean over its seeds with their min-max as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (*REPORTED, "mean")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), sharey=True)
    for ax, cls in zip(axes, panels):
        for strategy, mean in mean_curves(curves, cls).items():
            seeds = len(mean["seeds"])
            line, = ax.plot(mean["n_labelled"], mean["dice"], marker="o",
                            label=strategy if seeds == 1 else f"{strategy} ({seeds} seeds)")
            if seeds > 1:
                ax.fill_between(mean["n_labelled"], mean["min"], mean["max"], color=line.get_color(), alpha=0.15)
        ax.set_title(f"holdout Dice: {cls}", fontsize=9)
        ax.set_xlabel("labelled studies")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
