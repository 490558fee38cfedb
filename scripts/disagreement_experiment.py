#!/usr/bin/env python3
"""Which plane-disagreement definition tracks the ensemble's real error best?

For every labelled study of the split's ``fusion`` group (subjects the plane networks never
trained on; never ``holdout``, which is kept for evaluation), segment it with the weights, take
both definitions of :mod:`lumbarseg.disagreement` and the ensemble's error (1 - mean Dice over
the study's annotated classes, scored as ``lumbarseg evaluate`` does), and report the Spearman
rank correlation of each definition with the error, over all studies and per set (sets with at
least 4 studies). Writes a JSON and a scatter PNG.

    .venv/bin/python scripts/disagreement_experiment.py --weights weights/lite \\
        --data ../shared/data --out docs/disagreement_experiment.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from lumbarseg import disagreement
from lumbarseg.evaluation import study_dice
from lumbarseg.io import manifest
from lumbarseg.config import ConfigError
from lumbarseg.io.study import StudyError
from lumbarseg.pipeline import Segmenter
from lumbarseg.training import group_of, load_split

MIN_PER_SET = 4


def correlations(rows: list[dict]) -> dict[str, dict]:
    """Spearman rho and p of each definition against the error (studies with a score)."""
    out = {}
    for definition in disagreement.DEFINITIONS:
        scored = [r for r in rows if r[definition] is not None]
        rho, p = spearmanr([r[definition] for r in scored], [r["error"] for r in scored])
        out[definition] = {"spearman_rho": round(float(rho), 4), "p_value": round(float(p), 5), "n": len(scored)}
    return out


def run(weights: Path, data: Path) -> dict:
    split = load_split()
    entries = [e for e in manifest.read_manifest(data) if e.label is not None and group_of(e, split) == "fusion"]
    if not entries:
        raise StudyError(data, "no labelled studies of the split's fusion group")
    segmenter = Segmenter.load(weights)
    rows = []
    began = time.perf_counter()
    for entry in tqdm(entries, desc="segmenting", unit="study"):
        study = manifest.load_entry(entry)
        segmentation = segmenter.segment(study.primary)
        dice = study_dice(segmentation.classes, study)
        rows.append({"set": entry.set, "subject": entry.subject, "dice": dice,
                     "error": 1.0 - float(np.mean(list(dice.values()))),
                     **{d: disagreement.score(segmentation, d) for d in disagreement.DEFINITIONS}})
    sets = sorted({r["set"] for r in rows})
    overall = correlations(rows)
    ranked = [d for d, c in overall.items() if np.isfinite(c["spearman_rho"])]  # NaN: the error is constant
    return {
        "weights": str(weights), "data": str(data), "group": "fusion", "studies": len(rows),
        "error": "1 - mean ensemble Dice over the study's annotated classes (lumbarseg.evaluation's scoring rule)",
        "spearman": overall,
        "spearman_per_set": {s: correlations([r for r in rows if r["set"] == s]) for s in sets
                             if sum(r["set"] == s for r in rows) >= MIN_PER_SET},
        "winner": max(ranked, key=lambda d: overall[d]["spearman_rho"]) if ranked else None,
        "seconds": round(time.perf_counter() - began, 1),
        "rows": rows,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    sets = sorted({r["set"] for r in rows})
    fig, axes = plt.subplots(1, len(disagreement.DEFINITIONS), figsize=(8, 3.4))
    for ax, definition in zip(axes, disagreement.DEFINITIONS):
        for s in sets:
            pts = [(r[definition], r["error"]) for r in rows if r["set"] == s and r[definition] is not None]
            ax.scatter(*zip(*pts), s=18, label=s)
        rho = result["spearman"][definition]["spearman_rho"]
        ax.set_title(f"{definition}: Spearman rho = {rho:.2f}", fontsize=9)
        ax.set_xlabel(definition)
        ax.set_ylabel("ensemble error (1 - Dice)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="lumbarseg weights folder")
    parser.add_argument("--data", required=True, help="data folder with a manifest.csv (sets of configs/data/split.json)")
    parser.add_argument("--out", required=True, help="results JSON; the scatter PNG goes beside it")
    args = parser.parse_args(argv)
    try:
        result = run(Path(args.weights), Path(args.data))
    except (StudyError, ConfigError) as err:
        print(f"disagreement_experiment: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    for definition, c in result["spearman"].items():
        print(f"{definition:14s} Spearman rho {c['spearman_rho']:+.3f} (p {c['p_value']:.3g}, n {c['n']})")
    print(f"winner: {result['winner'] or 'none (no correlation defined)'}; wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
