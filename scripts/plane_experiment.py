#!/usr/bin/env python3
"""Does a change to a plane network's training recipe buy Dice? Train one plane under each preset
named, from a weights folder (fine-tuning) or from random weights, and score it per set on the
fusion group.

The fusion group is never trained on by the plane networks (the fusion learns from their
predictions of it), so a plane's Dice there is an unseen-data figure that leaves the holdout
untouched for ``lumbarseg evaluate``. Each arm runs ``lumbarseg.training.train_plane`` exactly as
``lumbarseg train`` does (same seed and slice draw: an arm's checkpoint resumes a full run of its
preset), then every fusion-group study is scored with the mean Dice per class it annotates
(``lumbarseg.training.validation_dice``), per set; starting weights are scored alongside.
Arms from random weights compare recipes or network presets (the preset's ``model``) at equal
iterations; each arm records its minutes.

    .venv/bin/python scripts/plane_experiment.py --weights weights/lite --data ../shared/data \\
        --presets lite_more lite_context --plane sagittal --work runs/plane_experiment \\
        --out docs/results/plane_experiment_slice_context.json
    .venv/bin/python scripts/plane_experiment.py --data ../shared/data --presets scratch_lite scratch_wide \
        --plane sagittal --work runs/plane_experiment --out docs/results/plane_experiment_width.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from lumbarseg import pipeline, planes
from lumbarseg.config import ConfigError
from lumbarseg.io.study import StudyError
from lumbarseg.training import TrainingPreset, collect_volumes, network, train_plane, validation_dice, volumes_by_set


def score(model, plane: str, volumes, context: bool) -> dict[str, dict[str, float]]:
    """Per set, the plane's mean Dice per annotated class over ``volumes``."""
    return {name: validation_dice(lambda v: pipeline.predict_plane(model, v.image, plane, context=context).argmax(0), vs)
            for name, vs in volumes_by_set(volumes).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="weights folder every arm starts from (default: random weights)")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="data folders with a manifest.csv")
    parser.add_argument("--presets", nargs="+", required=True, help="training presets, one arm each")
    parser.add_argument("--plane", choices=planes.PLANES, default="sagittal")
    parser.add_argument("--work", type=Path, required=True, help="run folder: volume cache, one checkpoint folder per arm")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")  # a line per epoch
    try:
        presets = {Path(name).stem: TrainingPreset.load(name) for name in args.presets}
        volumes = collect_volumes(args.data, next(iter(presets.values())), args.work / "cache")
        context = pipeline.ModelInfo.load(args.weights).slice_context if args.weights else False
    except (ConfigError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = {"weights": args.weights and str(args.weights), "plane": args.plane,
               "fusion_group": len(volumes["fusion"]), "arms": {}}
    if args.weights:
        start = network(args.plane, next(iter(presets.values())), args.weights)
        results["arms"]["start"] = {"dice": score(start, args.plane, volumes["fusion"], context)}
    for name, preset in presets.items():
        out = args.work / name
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        model, history = train_plane(args.plane, volumes, preset, out, args.weights)
        results["arms"][name] = {"preset": name, "minutes": round((time.perf_counter() - began) / 60, 1),
                                 "history": history, "dice": score(model, args.plane, volumes["fusion"], preset.slice_context)}
        args.out.write_text(json.dumps(results, indent=1))
    first = next(iter(results["arms"].values()))["dice"]
    for set_name, classes in first.items():
        for cls in classes:
            arms = "  ".join(f"{n} {a['dice'][set_name][cls]:.3f}" for n, a in results["arms"].items())
            print(f"{set_name:16s} {cls:18s} {arms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
