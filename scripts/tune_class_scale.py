"""Choose a weights folder's ``class_scale`` for one class on validation data (never the held-out
phantom seed nor SPIDER's holdout group).

Fused classes are the argmax of the fused probabilities, each class's multiplied by its factor
(:attr:`lumbarseg.pipeline.ModelInfo.class_scale`). This script runs the networks once per study
and re-decides the classes for every factor of ``--factors``, then scores findings as
``lumbarseg evaluate-findings --source model`` does: herniation per disc, stenosis grade and
naming on phantom folders; herniation against the radiologist and the dural sac against the
expert masks on SPIDER (``--spider``, its ``--groups``). The choice (written into the JSON; a
person copies it into the weights' ``model.json``): among the factors whose stenosis grade
accuracy is no more than ``--stenosis-slack`` below the unscaled one, the largest (the most
sensitive) whose pooled phantom herniation specificity reaches ``--min-specificity`` (the
findings issue's target); if none does, the highest Youden index (sensitivity + specificity - 1).

    .venv/bin/lumbarseg phantoms --out runs/ph777 --count 20 --seed 777   (and --seed 778)
    .venv/bin/python scripts/tune_class_scale.py --weights weights/lite --class hernia \\
        --phantoms runs/ph777 runs/ph778 --spider ../shared/data/spider_t2_space \\
        --out docs/results/class_scale_sweep.json     (and class_scale_sweep.png)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumbarseg import pipeline  # noqa: E402
from lumbarseg.findings import evaluate_findings  # noqa: E402

FACTORS = [0.3, 0.4, 0.45, 0.5, 0.55, 0.7, 1.0]


class CachedSegmenter:
    """A :class:`lumbarseg.pipeline.Segmenter` whose network outputs are computed once per
    series (fused probabilities kept as float16, the planes as class maps: what findings read)
    and whose fused classes are re-decided with :attr:`scale`."""

    def __init__(self, segmenter: pipeline.Segmenter):
        self.segmenter = segmenter
        self.scale: np.ndarray | None = None
        self.cache: dict[tuple, tuple] = {}

    def segment(self, series) -> pipeline.Segmentation:
        key = (series.source, series.shape)

        def predict(image):
            if key not in self.cache:
                per_plane, fused, region = self.segmenter.predict(image)
                self.cache[key] = ({p: pipeline.class_map(v) for p, v in per_plane.items()},
                                   fused.astype(np.float16), region)
            per_plane, fused, region = self.cache[key]
            return per_plane, fused.astype(np.float32), region

        return pipeline.segment_series(series, self.segmenter.spacing, predict, self.scale)


def youden(per_disc: dict) -> float | None:
    if per_disc["sensitivity"] is None or per_disc["specificity"] is None:
        return None
    return round(per_disc["sensitivity"] + per_disc["specificity"] - 1, 4)


def phantom_row(results: list[dict]) -> dict:
    """Herniation per disc, stenosis and naming over several phantom folders' results."""
    counts = {k: sum(r["herniation"]["per_disc"][k] for r in results) for k in ("tp", "tn", "fp", "fn")}
    per_disc = {"sensitivity": round(counts["tp"] / max(counts["tp"] + counts["fn"], 1), 4),
                "specificity": round(counts["tn"] / max(counts["tn"] + counts["fp"], 1), 4), **counts}
    levels = sum(r["stenosis"]["n"] for r in results)
    return {"herniation_per_disc": {**per_disc, "youden": youden(per_disc)},
            "stenosis_grade_accuracy": round(sum(r["stenosis"]["grade_accuracy"] * r["stenosis"]["n"]
                                                 for r in results) / levels, 4),
            "stenosis_levels": levels,
            "naming": [sum(r["levels"][k] for r in results) for k in ("correct", "total")],
            "per_folder": {r["data"]: r["herniation"]["per_disc"] for r in results}}


def spider_row(result: dict) -> dict:
    graded = result["radiologist"]
    return {"herniation_by_order": {k: graded["herniation_by_order"][k]
                                    for k in ("sensitivity", "specificity", "tp", "tn", "fp", "fn")},
            "naming": graded["naming"], "dural_sac": graded["dural_sac"]}


def choose(rows: list[dict], slack: float, min_specificity: float) -> float:
    plain = next(r for r in rows if r["factor"] == 1.0)["phantoms"]["stenosis_grade_accuracy"]
    allowed = [r for r in rows if r["phantoms"]["stenosis_grade_accuracy"] >= plain - slack]
    specific = [r for r in allowed if r["phantoms"]["herniation_per_disc"]["specificity"] >= min_specificity]
    if specific:
        return max(r["factor"] for r in specific)
    return max(allowed, key=lambda r: (r["phantoms"]["herniation_per_disc"]["youden"], -abs(np.log(r["factor"]))))["factor"]


def plot(result: dict, path: Path) -> None:
    """Phantom herniation sensitivity against 1 - specificity, one point per factor (the chosen
    one marked), and the issue's targets as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = result["chosen"][result["class"]]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = [(1 - r["phantoms"]["herniation_per_disc"]["specificity"], r["phantoms"]["herniation_per_disc"]["sensitivity"],
               r["factor"]) for r in result["rows"]]
    ax.plot([x for x, _, _ in points], [y for _, y, _ in points], "o-", color="tab:blue")
    for x, y, factor in points:
        ax.annotate(f"{factor:g}", (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8,
                    fontweight="bold" if factor == chosen else "normal")
    x, y, _ = next(p for p in points if p[2] == chosen)
    ax.plot([x], [y], "s", color="tab:red", label=f"chosen: {result['class']} x {chosen:g}")
    ax.axvline(1 - result["min_specificity"], ls="--", color="grey", lw=0.8)
    ax.axhline(0.75, ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity (validation phantom discs)")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{result['class']} class factor: herniation per disc", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="weights folder (its own class_scale is ignored)")
    parser.add_argument("--class", dest="tissue", default="hernia", help="the class to scale")
    parser.add_argument("--factors", type=float, nargs="+", default=FACTORS)
    parser.add_argument("--phantoms", nargs="+", required=True, help="validation phantom folders")
    parser.add_argument("--spider", help="SPIDER folder; scored on --groups only")
    parser.add_argument("--groups", nargs="+", default=["train", "fusion"], help="SPIDER split groups (never holdout)")
    parser.add_argument("--stenosis-slack", type=float, default=0.01,
                        help="stenosis grade accuracy the choice may lose against factor 1")
    parser.add_argument("--min-specificity", type=float, default=0.95,
                        help="phantom herniation specificity the chosen factor must reach")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if "holdout" in args.groups:
        parser.error("the holdout group is the result: never tune on it")
    factors = sorted(set(args.factors) | {1.0})

    segmenter = pipeline.Segmenter.load(args.weights)
    names = segmenter.info.tissues
    cached = {folder: CachedSegmenter(segmenter) for folder in [*args.phantoms, *([args.spider] if args.spider else [])]}
    rows = []
    for factor in factors:
        scale = pipeline.class_scale_vector({args.tissue: factor}, names)
        for c in cached.values():
            c.scale = scale
        phantoms = [evaluate_findings(f, "model", args.weights, all_subjects=True, segmenter=cached[f]) for f in args.phantoms]
        row = {"factor": factor, "phantoms": phantom_row(phantoms)}
        if args.spider:
            row["spider"] = spider_row(evaluate_findings(args.spider, "model", args.weights, groups=tuple(args.groups),
                                                         segmenter=cached[args.spider]))
        rows.append(row)
        print(json.dumps({"factor": factor, **{k: row["phantoms"][k] for k in ("herniation_per_disc", "stenosis_grade_accuracy")},
                          **({"spider": row["spider"]["herniation_by_order"]} if args.spider else {})}), flush=True)
    chosen = choose(rows, args.stenosis_slack, args.min_specificity)
    out = {"weights": args.weights, "class": args.tissue, "phantoms": args.phantoms, "spider": args.spider,
           "spider_groups": args.groups, "stenosis_slack": args.stenosis_slack,
           "min_specificity": args.min_specificity, "rows": rows,
           "chosen": {args.tissue: chosen}}
    Path(args.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(args.out).with_suffix(".png"))
    print(f"chosen class_scale: {{{args.tissue!r}: {chosen}}}")


if __name__ == "__main__":
    main()
