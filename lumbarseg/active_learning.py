"""Active-learning simulation (``lumbarseg al-simulate``): does picking studies by plane
disagreement beat picking them at random?

The pool is the ``train`` and ``fusion`` groups of the split (sets the split does not name are
pool too); the ``holdout`` group is never picked and is where every round is evaluated. A
seeded draw of ``initial`` pool studies starts labelled (the same draw for every strategy).
Round 0 trains a model on them: from scratch with the round preset, or fine-tuning
``init_weights``. Each later round scores the unlabelled pool with the current model, picks
the ``per_round`` best by the strategy, reveals their labels, fine-tunes the current model on
all labelled studies (the way the MONAI Label app's train task fine-tunes the served model),
and evaluates on the holdout: mean Dice per class over holdout studies (``disc``,
``vertebral_body`` and their mean are what the curves show).

Strategies:

* ``disagreement``: :func:`lumbarseg.disagreement.score` of each study (the definition the
  app serves), highest first: the app's ``disagreement`` strategy, K at a time;
* ``random``: a seeded uniform draw;
* ``epistemic``: MC-dropout entropy (:func:`epistemic_entropy`). MONAI Label's own
  ``EpistemicScoring`` cannot score these models: it runs one MONAI 3D network by sliding-window
  inference, whereas a study here goes through three 2D plane networks and the 3D fusion.

Labelled studies train the planes, except every 4th (at least one), which goes to the
``fusion`` group: the fusion learns on out-of-fold plane predictions, as in full training.
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

from lumbarseg import disagreement
from lumbarseg.evaluation import study_dice
from lumbarseg.io import manifest
from lumbarseg.io.study import Study, StudyError
from lumbarseg.pipeline import Segmenter, segment_series
from lumbarseg.training import GROUPS, UNSEEN, TrainingPreset, group_of, load_split, train

STRATEGIES = ("disagreement", "random", "epistemic")
REPORTED = ("disc", "vertebral_body")  # the classes the real sets label; "mean" is their mean
log = logging.getLogger("lumbarseg.al")


class ActiveLearningError(ValueError):
    """Bad simulation settings (strategy, sizes)."""


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
           rng: np.random.Generator) -> list[str]:
    """The ``k`` studies to label next: highest score first (ties by name), or a seeded draw."""
    if strategy == "random":
        return [candidates[i] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]
    return sorted(candidates, key=lambda key: (-scores[key], key))[:k]


def round_split(entries: list[manifest.ManifestEntry], labelled: list[str]) -> dict:
    """Training groups for a round: labelled studies train the planes, every 4th (at least one)
    the fusion; every other study (unlabelled pool, holdout) is ``holdout``, i.e. unread."""
    fusion = set(labelled[3::4]) or {labelled[-1]}
    split: dict[str, dict[str, list[str]]] = {}
    for e in entries:
        group = "holdout" if e.key not in labelled else "fusion" if e.key in fusion else "train"
        split.setdefault(e.set, {g: [] for g in GROUPS})[group].append(e.subject)
    for e in entries:  # group_of is what training reads: it must see each study where we put it
        if group_of(e, split) == UNSEEN:
            raise StudyError(e.image.parent, f"set {e.set!r} is split by a unit larger than one study "
                                             "(configs/data/split.json); active learning picks single "
                                             "studies, so leave that set out")
    return split


def _run_name(r: int, preset: TrainingPreset, init: Path | None, labelled: list[str]) -> str:
    """``round_<r>_<hash>`` of what a round trains on and from: strategies sharing a work folder
    share their identical first round, and a rerun resumes only the same training."""
    what = json.dumps([asdict(preset), None if init is None else str(Path(init).resolve()), labelled])
    return f"round_{r}_{hashlib.sha256(what.encode()).hexdigest()[:10]}"


def simulate(data_dirs: list[Path], strategy: str, rounds: int, per_round: int, work: Path, *,
             initial: int = 3, preset: str = "al_round", init_weights: Path | None = None, seed: int = 0,
             mc_samples: int = 8, split: dict | None = None) -> dict:
    """Run the simulation; returns the curve (see :func:`save_curve`). Round models go to
    ``work/round_<r>_<hash>/`` (see :func:`_run_name`)."""
    if strategy not in STRATEGIES:
        raise ActiveLearningError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if rounds < 0 or per_round < 1 or initial < 2:
        raise ActiveLearningError(f"need rounds >= 0, per-round >= 1 and initial >= 2 (one study trains the "
                                  f"planes, one the fusion); got {rounds}, {per_round}, {initial}")
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

    round_preset = TrainingPreset.load(preset)
    work.mkdir(parents=True, exist_ok=True)
    (work / "cache").mkdir(exist_ok=True)
    labelled = [pool[i] for i in sorted(np.random.default_rng([seed, 0]).choice(len(pool), initial, replace=False))]
    curve = {"strategy": strategy, "data": [str(d) for d in data_dirs], "preset": preset,
             "init_weights": None if init_weights is None else str(init_weights), "seed": seed,
             "initial": initial, "per_round": per_round, "pool_size": len(pool),
             "holdout": [e.key for e in holdout], "rounds": []}
    if strategy == "epistemic":
        curve["mc_samples"] = mc_samples
    if strategy == "disagreement":
        curve["definition"] = disagreement.DEFINITION
    model, chosen, scores = init_weights, list(labelled), None
    for r in range(rounds + 1):
        began = time.perf_counter()
        if r:
            # Scored by the previous round's model; a study where it finds no tissue scores 0, as
            # the app's plane_disagreement scoring stores it.
            candidates = [k for k in pool if k not in labelled]
            if strategy == "disagreement":
                scores = {k: disagreement.score(segmenter.segment(study(k).primary)) or 0.0 for k in candidates}
            elif strategy == "epistemic":
                scores = {k: epistemic_entropy(segmenter, study(k).primary, mc_samples, seed) or 0.0
                          for k in candidates}
            chosen = choose(strategy, candidates, per_round, scores, np.random.default_rng([seed, 1, r]))
            labelled += chosen
        out = work / _run_name(r, round_preset, model, labelled)
        if not (out / "cache").exists():
            out.mkdir(parents=True, exist_ok=True)
            (out / "cache").symlink_to((work / "cache").resolve(), target_is_directory=True)
        model = train(round_preset, data_dirs, out, init=model, split=round_split(entries, labelled))
        segmenter = Segmenter.load(model)
        per_study = {e.key: study_dice(segmenter.segment(study(e.key).primary).classes, study(e.key)) for e in holdout}
        dice = summarise(list(per_study.values()))
        curve["rounds"].append({
            "round": r, "n_labelled": len(labelled), "chosen": chosen, "model": str(model),
            "scores": None if scores is None else {k: round(v, 5) for k, v in sorted(scores.items())},
            "dice": dice, "holdout_dice": per_study, "seconds": round(time.perf_counter() - began, 1),
        })
        log.info("%s round %d/%d: %d labelled (+%s)  holdout Dice %s  (%.0f s)", strategy, r, rounds,
                 len(labelled), ", ".join(chosen), " ".join(f"{c}={dice[c]:.3f}" for c in (*REPORTED, "mean")
                                                             if c in dice), curve["rounds"][-1]["seconds"])
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
                         "seeds": sorted(c["seed"] for c in group)}
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


def plot_curves(curves: list[dict], path: Path) -> None:
    """Holdout Dice against the number of labelled studies, one panel per reported class and
    their mean: one line per strategy, the mean over its seeds with their min-max as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (*REPORTED, "mean")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0), sharey=True)
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
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
