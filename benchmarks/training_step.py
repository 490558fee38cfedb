"""Where a plane network's training step spends its time, next to a plain MONAI 2D U-Net.

Per plane, on the ``train`` group of the split (prepared volumes as ``lumbarseg train`` makes
them): the time to draw a batch (slice cut, crop, allowed-class coding) without and with the
paper's augmentations, the forward + backward + optimiser step of the plane network, and one
epoch's validation; then the same step for a ``monai.networks.nets.UNet`` of similar size on the
same batch. Medians over ``--repeats`` batches; slices per second follow from them.

    python benchmarks/training_step.py --data ../shared/data --cache /work/runs/lite/cache

Writes ``benchmarks/results/training_step.{json,md}`` with the machine description.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.networks.nets import UNet
from torch.utils.data import default_collate

from lumbarseg import pipeline, planes, tissues
from lumbarseg.losses import PartialDiceCELoss
from lumbarseg.training import SliceDataset, TrainingPreset, collect_volumes, network, validation_dice, volumes_by_set

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_bench as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plain_unet() -> torch.nn.Module:
    """MONAI's 2D U-Net at about the lite plane network's parameter count (0.47 M vs 0.51 M)."""
    return UNet(spatial_dims=2, in_channels=3, out_channels=tissues.NUM_TISSUES, channels=(24, 48, 96, 192),
                strides=(2, 2, 2), num_res_units=1, dropout=0.1)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, first-call overheads
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def batch_seconds(dataset: SliceDataset, batch_size: int, repeats: int) -> float:
    items = iter(range(len(dataset)))
    return _median_seconds(lambda: default_collate([dataset[next(items)] for _ in range(batch_size)]), repeats)


def step_seconds(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], repeats: int) -> float:
    loss_fn = PartialDiceCELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        optimizer.step()

    return _median_seconds(step, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[Path("../shared/data")])
    parser.add_argument("--cache", type=Path, required=True, help="prepared-volume cache (a training run's cache/)")
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "training_step")
    args = parser.parse_args(argv)

    preset = TrainingPreset.load(args.preset)
    volumes = collect_volumes(args.data, preset, args.cache)
    checks = [v for vs in volumes_by_set(volumes["fusion"]).values() for v in vs[:2]]
    plain = dataclasses.replace(preset, augment_probability=0.0)
    rows = []
    for plane in planes.PLANES:
        model = network(plane, preset, None)
        batch = default_collate([SliceDataset(volumes["train"], plane, preset, 0)[i] for i in range(preset.batch_size)])
        began = time.perf_counter()
        validation_dice(lambda v: pipeline.predict_plane(model, v.image, plane).argmax(0), checks)
        validation = time.perf_counter() - began
        rows.append({
            "plane": plane,
            "data_s": batch_seconds(SliceDataset(volumes["train"], plane, plain, 0), preset.batch_size, args.repeats),
            "data_augmented_s": batch_seconds(SliceDataset(volumes["train"], plane, preset, 0), preset.batch_size, args.repeats),
            "step_s": step_seconds(model, batch, args.repeats),
            "unet_step_s": step_seconds(plain_unet(), batch, args.repeats),
            "validation_s": validation,
        })
    per_epoch = preset.iterations_per_epoch
    for r in rows:
        r["slices_per_s"] = preset.batch_size / (r["data_augmented_s"] + r["step_s"])
        r["unet_slices_per_s"] = preset.batch_size / (r["data_augmented_s"] + r["unet_step_s"])
        r["epoch_s_estimate"] = per_epoch * (r["data_augmented_s"] + r["step_s"]) + r["validation_s"]
    results = {
        "machine": tb.machine(torch.get_num_threads()), "torch_threads": torch.get_num_threads(), "preset": args.preset,
        "batch": f"{preset.batch_size} x 3 x {preset.input_size} x {preset.input_size}", "repeats": args.repeats,
        "params": {"plane_net": parameters(network("sagittal", preset, None)), "unet": parameters(plain_unet())},
        "validation_studies": len(checks), "rows": rows,
    }
    tb.write_results(results, args.out.with_suffix(".json"), markdown)
    return 0


def markdown(results: dict) -> str:
    rows = results["rows"]
    lines = [
        "# Training step: where the time goes (median seconds per batch)", "",
        tb.machine_line(results["machine"], f"torch threads {results['torch_threads']}; preset `{results['preset']}`, "
                        f"batch {results['batch']}, {results['repeats']} repeats; parameters: plane net "
                        f"{results['params']['plane_net']:,}, MONAI UNet {results['params']['unet']:,}."), "",
        "| plane | data | data + augmentation | plane net fwd+bwd | UNet fwd+bwd | validation (per epoch) "
        "| plane net slices/s | UNet slices/s | epoch estimate |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['plane']} | {r['data_s']:.3f} | {r['data_augmented_s']:.3f} | {r['step_s']:.3f} | {r['unet_step_s']:.3f} "
          f"| {r['validation_s']:.1f} | {r['slices_per_s']:.1f} | {r['unet_slices_per_s']:.1f} | {r['epoch_s_estimate']:.0f} s |"
          for r in rows),
        "", "Slices per second count data with augmentation plus the step (the loader runs in the training process).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
