#!/usr/bin/env python3
"""Which way of training the fusion beats every single plane? Cross-validation on the fusion group.

The fusion learns on the plane networks' predictions of the split's ``fusion`` subjects (never
``holdout``, kept for ``lumbarseg evaluate``). Here those subjects are cut into folds, stratified
by set (crops of one subject stay together); for each fold a fusion variant trains on the other
folds and segments this one. Every variant, and each plane alone (argmax of its probabilities),
is scored per set with the mean Dice over the classes the set annotates, as training validates.
Variants (:data:`VARIANTS`: changes to the preset's fusion block): ``average`` (the untrained
fusion: the planes' mean probability), ``per_study`` (patches drawn study by study at lr 0.003,
the original scheme), ``per_set`` (set by set, as the planes draw slices) at lr 0.003, 0.001 and
0.0003 (a smaller rate stays nearer the average the fusion starts as).

With ``--oof-preset`` the paper's k-fold scheme is measured too
(``lumbarseg.training.out_of_fold_inputs``, as a preset's ``fusion.out_of_fold`` trains it): the
training subjects are cut into ``--oof-folds`` folds the same way, and for each fold the three
planes are trained from random weights (that preset) on the other folds, then predict this one.
The ``oof`` variants (:data:`OOF_VARIANTS`) then learn on these out-of-fold predictions of
every training subject as well as on the other fusion-group folds, and segment this fold from
the ``--weights`` planes' predictions, as a shipped fusion would.

    .venv/bin/python scripts/fusion_experiment.py --weights weights/lite --data ../shared/data \\
        --cache runs/cache --out docs/results/fusion_experiment.json
    .venv/bin/python scripts/fusion_experiment.py --weights weights/lite --data ../shared/data \\
        --preset lite_more --oof-preset scratch_lite --work runs/oof --cache runs/cache \\
        --out docs/results/fusion_experiment_oof.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lumbarseg import tissues
from lumbarseg.config import ConfigError
from lumbarseg.io.study import StudyError
from lumbarseg.pipeline import Segmenter
from lumbarseg.training import (TrainingPreset, collect_volumes, fit_fusion, folds_by_set, fusion_inputs, network,
                                out_of_fold_inputs, validation_dice)

VARIANTS = {
    "average": None,
    "per_study": {"balance_sets": False, "learning_rate": 0.003},
    "per_set": {"balance_sets": True, "learning_rate": 0.003},
    "per_set_lr0.001": {"balance_sets": True, "learning_rate": 0.001},
    "per_set_lr0.0003": {"balance_sets": True, "learning_rate": 0.0003},
}
OOF_VARIANTS = {
    "oof": {"balance_sets": True, "learning_rate": 0.0003},
    "oof_lr0.001": {"balance_sets": True, "learning_rate": 0.001},
}


def plane_classes(x: np.ndarray, plane_index: int) -> np.ndarray:
    k = tissues.NUM_TISSUES
    start = plane_index * (k + 1)
    return x[start:start + k].astype(np.float32).argmax(0)


def fused_classes(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        model.eval()
        return model(torch.from_numpy(x.astype(np.float32))[None])[0].argmax(0).numpy()


def run(weights: Path, data: list[Path], preset: TrainingPreset, cache: Path, n_folds: int,
        oof: tuple[TrainingPreset, Path, int] | None = None, only: list[str] | None = None) -> dict:
    """``oof``: (plane preset, work folder, folds) to measure the k-fold scheme as well;
    ``only``: the variants to train (default: all)."""
    groups = collect_volumes(data, preset, cache)
    volumes = groups["fusion"]
    if not volumes:
        raise StudyError(", ".join(map(str, data)), "no fusion-group studies")
    segmenter = Segmenter.load(weights)
    inputs = fusion_inputs(segmenter.plane_models, volumes, segmenter.spacing,
                           context=segmenter.info.slice_context)
    variants = dict(VARIANTS)
    extra_inputs, extra_volumes = [], []
    if oof is not None:
        oof_preset, work, oof_folds = oof
        extra_volumes = groups["train"]
        extra_inputs = out_of_fold_inputs(extra_volumes, volumes, oof_preset, work, oof_folds,
                                          spacing=segmenter.spacing, context=segmenter.info.slice_context)
        variants.update(OOF_VARIANTS)
    if only:
        variants = {name: change for name, change in variants.items() if name in only or change is None}
    fold = folds_by_set(volumes, n_folds)
    predictions: dict[str, dict[str, np.ndarray]] = {name: {} for name in (*segmenter.plane_models, *variants)}
    untrained = network("fusion", preset, None)
    for j, v in enumerate(volumes):
        for p, plane in enumerate(segmenter.plane_models):
            predictions[plane][v.key] = plane_classes(inputs[j], p)
        predictions["average"][v.key] = fused_classes(untrained, inputs[j])
    for variant, change in variants.items():
        if change is None:
            continue
        variant_preset = dataclasses.replace(preset, fusion=dataclasses.replace(preset.fusion, **change))
        more = (extra_inputs, extra_volumes) if variant in OOF_VARIANTS else ([], [])
        for f in range(n_folds):
            train = [j for j in range(len(volumes)) if fold[j] != f]
            with tempfile.TemporaryDirectory() as tmp:
                model, _ = fit_fusion([inputs[j] for j in train] + more[0], [volumes[j] for j in train] + more[1],
                                      variant_preset, Path(tmp) / "fusion.ckpt")
            for j in range(len(volumes)):
                if fold[j] == f:
                    predictions[variant][volumes[j].key] = fused_classes(model, inputs[j])
    per_set: dict[str, dict] = {}
    for set_name in sorted({v.key.split("/")[0] for v in volumes}):
        members = [v for v in volumes if v.key.startswith(set_name + "/")]
        per_set[set_name] = {"studies": len(members)}
        for name, by_key in predictions.items():
            dice = validation_dice(lambda v: by_key[v.key], members)
            per_set[set_name][name] = {"per_class": dice, "mean": float(np.mean(list(dice.values())))}
    return {"weights": str(weights), "data": [str(d) for d in data], "folds": n_folds, "variants": variants,
            "oof": None if oof is None else {"preset": dataclasses.asdict(oof[0]), "folds": oof[2],
                                             "training_studies": len(extra_volumes)},
            "fold_of": {v.key: f for v, f in zip(volumes, fold)}, "per_set": per_set}


def table(result: dict) -> str:
    names = [n for n in next(iter(result["per_set"].values())) if n != "studies"]
    lines = ["| set (studies) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for set_name, row in result["per_set"].items():
        best_plane = max(row[p]["mean"] for p in ("sagittal", "coronal", "axial"))
        cells = [f"{row[n]['mean']:.3f}" + (" *" if n in result["variants"] and row[n]["mean"] > best_plane else "") for n in names]
        lines.append(f"| {set_name} ({row['studies']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n`*`: above every single plane.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="weights folder whose plane networks to fuse")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="data folders (split.json names the fusion group)")
    parser.add_argument("--preset", default="lite", help="training preset (fusion schedule, phantoms)")
    parser.add_argument("--cache", type=Path, required=True, help="folder for prepared volumes")
    parser.add_argument("--folds", type=int, default=2, help="folds of the fusion group")
    parser.add_argument("--oof-preset", help="also measure the k-fold scheme, its planes trained with this preset")
    parser.add_argument("--oof-folds", type=int, default=4, help="folds of the training subjects (the paper: 4)")
    parser.add_argument("--work", type=Path, help="folder for the k-fold planes and their predictions (with --oof-preset)")
    parser.add_argument("--variants", nargs="+", choices=[*VARIANTS, *OOF_VARIANTS],
                        help="train only these (default: all; the untrained average is always scored)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results; a Markdown table is written beside it")
    args = parser.parse_args(argv)
    if args.oof_preset and not args.work:
        parser.error("--oof-preset needs --work")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")  # a line per epoch
    began = time.perf_counter()
    try:
        oof = (TrainingPreset.load(args.oof_preset), args.work, args.oof_folds) if args.oof_preset else None
        result = run(args.weights, args.data, TrainingPreset.load(args.preset), args.cache, args.folds, oof, args.variants)
    except (StudyError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["minutes"] = round((time.perf_counter() - began) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
