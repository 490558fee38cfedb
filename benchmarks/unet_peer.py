"""A public peer for the plane networks: a plain MONAI 2D U-Net on sagittal slices.

Same data, same split, same slices and augmentations (``lumbarseg.training.SliceDataset`` of
the training preset), same partial-label loss; the U-Net trains for a wall-clock budget (by
default what one ``lite`` plane takes, the sagittal one), then is scored on the held-out
subjects by the rule of ``lumbarseg evaluate``, on the same grid.

    python benchmarks/unet_peer.py --data ../shared/data --cache runs/lite/cache --out runs/unet_peer

Writes the U-Net's weights and log to ``--out`` and its held-out Dice to
``benchmarks/results/unet_peer.{json,md}``, per set and overall, beside the shipped model's.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from lumbarseg import pipeline
from lumbarseg.evaluation import evaluated_entries, study_dice
from lumbarseg.io import manifest
from lumbarseg.losses import PartialDiceCELoss
from lumbarseg.training import SliceDataset, TrainingPreset, collect_volumes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_bench as tb  # noqa: E402
from training_step import plain_unet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("unet_peer")


class Padded(torch.nn.Module):
    """Pads a slice to a multiple of the U-Net's total stride and crops the output back, so any
    slice size runs (the plane networks take any size as they are)."""

    def __init__(self, net: torch.nn.Module, multiple: int = 8):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad = (0, -w % self.multiple, 0, -h % self.multiple)
        return self.net(F.pad(x, pad))[..., :h, :w]


def train_unet(volumes: list, preset: TrainingPreset, budget_s: float) -> tuple[torch.nn.Module, list[dict]]:
    """Epochs of the preset's size until the budget is spent; cosine learning rate over the budget."""
    torch.manual_seed(preset.seed)
    model = Padded(plain_unet())
    loss_fn = PartialDiceCELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.learning_rate, weight_decay=preset.weight_decay)
    began, history, epoch = time.perf_counter(), [], 0
    while (elapsed := time.perf_counter() - began) < budget_s:
        model.train()
        losses = []
        for x, allowed in tqdm(DataLoader(SliceDataset(volumes, "sagittal", preset, epoch), batch_size=preset.batch_size),
                               desc=f"unet epoch {epoch + 1}", leave=False):
            elapsed = time.perf_counter() - began
            if elapsed >= budget_s:
                break
            for group in optimizer.param_groups:
                group["lr"] = preset.learning_rate * 0.5 * (1 + math.cos(math.pi * elapsed / budget_s))
            optimizer.zero_grad()
            loss = loss_fn(model(x), allowed)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch += 1
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else None, "seconds": elapsed,
                        "slices": len(losses) * preset.batch_size})
        log.info("unet epoch %d  loss %s  (%.0f of %.0f s)", epoch, history[-1]["loss"], elapsed, budget_s)
    return model, history


def score(model: torch.nn.Module, data: Path, spacing: float) -> list[dict]:
    """Held-out Dice per study, the sagittal U-Net alone, through the pipeline's study steps."""
    subjects = []
    for entry in tqdm(evaluated_entries(data), desc="evaluating", unit="study"):
        study = manifest.load_entry(entry)
        if study.primary.label is None:
            continue
        segmentation = pipeline.segment_series(
            study.primary, spacing, lambda image: ({}, pipeline.predict_plane(model, image, "sagittal")))
        subjects.append({"set": entry.set, "subject": entry.subject, "dice": study_dice(segmentation.classes, study)})
    return subjects


def _mean(rows: list[dict]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, required=True, help="prepared-volume cache (a training run's cache/)")
    parser.add_argument("--preset", default="lite", help="training preset whose slices, batch and lr the U-Net uses")
    parser.add_argument("--minutes", type=float, default=12.5,
                        help="wall-clock budget (default: what the lite preset's sagittal plane takes on this "
                             "machine idle, 12.5 min; weights/lite/MODEL_CARD.md)")
    parser.add_argument("--out", type=Path, required=True, help="run folder for the U-Net's weights and log")
    parser.add_argument("--results", type=Path, default=RESULTS / "unet_peer.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "train.log")])

    preset = TrainingPreset.load(args.preset)
    budget = args.minutes * 60
    volumes = collect_volumes([args.data], preset, args.cache)
    model, history = train_unet(volumes["train"], preset, budget)
    torch.save(model.net.state_dict(), args.out / "unet.pt")
    subjects = score(model, args.data, preset.spacing_mm)
    results = {
        "machine": tb.machine(torch.get_num_threads()), "preset": args.preset, "budget_s": budget,
        "slices_seen": sum(h["slices"] for h in history), "epochs": history,
        "summary": _mean([s["dice"] for s in subjects]),
        "per_set": {st: _mean([s["dice"] for s in subjects if s["set"] == st]) for st in sorted({s["set"] for s in subjects})},
        "subjects": subjects,
    }
    tb.write_results(results, args.results, markdown)
    return 0


def markdown(results: dict) -> str:
    classes = sorted({c for d in results["per_set"].values() for c in d})
    rows = [("all held-out", results["summary"]), *results["per_set"].items()]
    return "\n".join([
        "# Plain MONAI 2D U-Net (sagittal) on the held-out subjects", "",
        tb.machine_line(results["machine"], f"budget {results['budget_s'] / 60:.1f} min, {results['slices_seen']:,} "
                        f"slices seen, preset `{results['preset']}` slices and loss."), "",
        "| set | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes),
        *(f"| {name} | " + " | ".join(f"{d[c]:.3f}" if c in d else "–" for c in classes) + " |" for name, d in rows),
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
