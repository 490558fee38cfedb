"""How much Dice the model grid alone costs: the ground truth sent through the inference path.

The networks work on an isotropic grid (``spacing_mm`` of the training preset, 1.5 mm for
``lite``) and their probabilities are resampled back to the study's grid. Here a perfect
network is simulated: each held-out study's truth, one-hot on the model grid (trilinear, as
the image is), goes through :func:`lumbarseg.pipeline.segment_series` and is scored by the rule
of ``lumbarseg evaluate``. What this gives at a spacing is the Dice ceiling of any model on
that grid; the gap to 1.0 is what the grid costs, per class and per set.

    python benchmarks/grid_ceiling.py --data ../shared/data --spacings 1.0 1.5 2.0

Writes ``benchmarks/results/grid_ceiling.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lumbarseg import pipeline, planes, tissues
from lumbarseg.datasets import tissue_target
from lumbarseg.evaluation import evaluated_entries, study_dice
from lumbarseg.io import manifest
from lumbarseg.io.study import Study

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_bench as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def truth_on_grid(study: Study, spacing: float) -> np.ndarray:
    """``(K, X, Y, Z)`` one-hot truth of the primary series on the ``spacing`` mm canonical grid;
    a partial label counts as its first class (``vertebra``: vertebral body, inside the union
    it is scored as), unannotated voxels as background."""
    canonical = planes.to_canonical(study.primary)
    target = tissue_target(canonical.label, study.structures)
    for name, code in tissues.PARTIAL_CODES.items():
        target[target == code] = tissues.classes_of(name)[0].index
    target[target >= tissues.NUM_TISSUES] = 0
    onehot = (target[None] == np.arange(tissues.NUM_TISSUES).reshape(-1, 1, 1, 1)).astype(np.float32)
    return planes.resample(onehot, planes.grid_size(canonical, spacing), "trilinear")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--out", type=Path, default=RESULTS / "grid_ceiling.json")
    args = parser.parse_args(argv)

    rows = []
    for entry in tqdm(evaluated_entries(args.data), desc="studies", unit="study"):
        study = manifest.load_entry(entry)
        if study.primary.label is None:
            continue
        for spacing in args.spacings:
            probabilities = truth_on_grid(study, spacing)
            segmentation = pipeline.segment_series(study.primary, spacing, lambda image: ({}, probabilities))
            rows.append({"set": entry.set, "subject": entry.subject, "spacing_mm": spacing,
                         "dice": study_dice(segmentation.classes, study)})
    summary = {}
    for spacing in args.spacings:
        at = [r for r in rows if r["spacing_mm"] == spacing]
        for group in ("all", *sorted({r["set"] for r in at})):
            chosen = [r["dice"] for r in at if group in ("all", r["set"])]
            classes = sorted({c for d in chosen for c in d})
            summary.setdefault(group, {})[str(spacing)] = {c: float(np.mean([d[c] for d in chosen if c in d])) for c in classes}
    tb.write_results({"machine": tb.machine(1), "spacings_mm": args.spacings, "summary": summary, "studies": rows},
                     args.out, markdown)
    return 0


def markdown(results: dict) -> str:
    lines = ["# Dice ceiling of the model grid (held-out truth through the inference path)", "",
             tb.machine_line(results["machine"], "No network: the truth, one-hot on the grid, resampled back."), "",
             "| set | spacing (mm) | classes (mean Dice) |", "|---|---|---|"]
    for group, by_spacing in results["summary"].items():
        for spacing, dice in by_spacing.items():
            lines.append(f"| {group} | {spacing} | " + ", ".join(f"{c} {v:.3f}" for c, v in dice.items()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
