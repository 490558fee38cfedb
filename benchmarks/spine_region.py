"""Whole-volume against spine-region inference, side by side in one run on the same studies:
time, network work (GFLOP) and held-out Dice.

Spine-region inference (:class:`lumbarseg.pipeline.RegionSettings`): a first pass of the sagittal
network on every few sagittal slices finds the spine's box; the three planes and the fusion run
on that box plus a margin, background outside. This measures what it saves and what it costs:

* **time** on the 36x256x256 four-contrast phantom of ``triton_bench.py`` (IVDM3Seg's grid),
  in process: :func:`lumbarseg.analysis.analyse` from the loaded study to the findings report,
  split into segmentation (resampling, first pass, planes, fusion, classes on the source grid)
  and report (post-processing, levels, measurements); one warm-up per mode, then ``--repeats``
  rounds in which each mode runs once in turn, so a load change hits both alike; medians;
* **GFLOP** of the network work each mode does on that study (``torch.utils.flop_counter``,
  first pass included);
* **held-out Dice** per class (``lumbarseg evaluate``'s studies and scoring rule: the holdout
  subjects of ``configs/data/split.json``) of the fused segmentation, both modes on every study;
* optionally (``--triton``) the same study through a real Triton server (CPU configs,
  ``spine_pipeline`` with the request parameter ``spine_region`` true or false), interleaved.

    nice .venv/bin/python benchmarks/spine_region.py --weights weights/lite --repeats 5 --triton

Writes ``benchmarks/results/spine_region.{json,md}`` with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_bench as tb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODES = {"whole": False, "region": True}  # label -> Segmenter.segment(region=...)
# Dice only: crop whenever the first pass finds a spine, however much of the grid its box holds.
# The held-out sets are cropped to their labels plus 30 mm, so the spine fills most of each grid
# and the shipped setting (max_share) runs most of them whole; this mode measures what cutting
# the field of view to the box costs in Dice, study by study.
FORCED = "region_forced"


def network_gflop(segmenter, image: np.ndarray, region: bool) -> float:
    """GFLOP of the networks (first pass, three planes, fusion) on one network input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        segmenter.predict(image, region)
    return round(counter.get_total_flops() / 1e9, 1)


def study_timing(segmenter, repeats: int, seed: int) -> dict:
    """The 36x256x256 phantom through :func:`analysis.analyse` in both modes, interleaved."""
    from lumbarseg import analysis, phantom, planes

    study = phantom.generate(seed, shape=tb.IVDM_SHAPE, spacing=tb.IVDM_SPACING, modalities=tb.IVDM_MODALITIES)
    image = planes.model_input(study.primary, segmenter.spacing)
    times = {mode: {"total": [], "segment": [], "report": []} for mode in MODES}
    regions = {}

    def run(mode: str, record: bool) -> None:
        segmentation = {}

        def segment(s):
            start = time.perf_counter()
            segmentation["value"] = segmenter.segment(s, region=MODES[mode])
            segmentation["s"] = time.perf_counter() - start
            return segmentation["value"]

        start = time.perf_counter()
        analysis.analyse(study, segment)
        total = time.perf_counter() - start
        regions[mode] = segmentation["value"].region.as_dict()
        if record:
            times[mode]["total"].append(round(total, 3))
            times[mode]["segment"].append(round(segmentation["s"], 3))
            times[mode]["report"].append(round(total - segmentation["s"], 3))

    for mode in MODES:
        run(mode, record=False)  # warm-up
    for round_ in range(repeats):
        for mode in MODES:
            run(mode, record=True)
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(
            f"{m} {t['total'][-1]:.1f} s (segment {t['segment'][-1]:.1f}, report {t['report'][-1]:.1f})"
            for m, t in times.items()), flush=True)
    rows = {}
    for mode in MODES:
        rows[mode] = {key: round(statistics.median(v), 3) for key, v in times[mode].items()}
        rows[mode].update(runs=times[mode], region=regions[mode], gflop=network_gflop(segmenter, image, MODES[mode]))
    return {"shape": list(tb.IVDM_SHAPE), "spacing_mm": list(tb.IVDM_SPACING), "modalities": list(tb.IVDM_MODALITIES),
            "phantom_seed": seed, "model_grid": list(image.shape[1:]), "modes": rows,
            "ratio_region_over_whole": round(rows["region"]["total"] / rows["whole"]["total"], 3),
            "target_s": 5.0}


def locate_only(segmenter, series):
    """The box the first pass finds on a series, however much of the grid it holds."""
    from lumbarseg import planes

    image = planes.model_input(series, segmenter.spacing)
    return segmenter.locate(image, replace(segmenter.region, enabled=True, max_share=1.0))


def heldout_dice(segmenter, data: Path, limit: int | None, forced: bool, groups: tuple[str, ...] = ("holdout",)) -> dict:
    """Fused Dice per class of both modes on ``lumbarseg evaluate``'s studies (``groups`` of the
    split: the holdout for the result; another group to choose settings without it)."""
    from lumbarseg import evaluation
    from lumbarseg.io import manifest
    from lumbarseg.training import group_of, load_split

    split = load_split()
    entries = evaluation.evaluated_entries(data, groups=groups)[:limit]
    modes = {"region": True, "whole": False, **({FORCED: replace(segmenter.region, enabled=True, max_share=1.0)}
                                                  if forced else {})}
    subjects = []
    for n, entry in enumerate(entries, 1):
        study = manifest.load_entry(entry)
        if study.primary.label is None:
            continue
        row = {"set": entry.set, "subject": entry.subject, "group": group_of(entry, split), "dice": {}, "seconds": {}}
        for mode, region in modes.items():
            if mode != "region" and not row["region"]["cropped"] and (mode == "whole" or row["forced"]["share"] >= 1):
                # the first pass ran the whole volume: the same computation as whole-volume inference
                row["dice"][mode], row["seconds"][mode] = row["dice"]["region"], None
                continue
            start = time.perf_counter()
            segmentation = segmenter.segment(study.primary, region=region)
            row["seconds"][mode] = round(time.perf_counter() - start, 2)
            row["dice"][mode] = evaluation.study_dice(segmentation.classes, study)
            if mode == "region":
                row["region"] = segmentation.region.as_dict()
                # the box the first pass found, whether or not the region ran on it
                found = locate_only(segmenter, study.primary)
                row["forced"] = found.as_dict()
        subjects.append(row)
        print(f"{n}/{len(entries)} {entry.set}/{entry.subject}: {row['region']['status']} "
              f"(share {row['region']['share']:.2f}; box found {row['forced']['share']:.2f}); "
              + ", ".join(f"{m} {t} s" for m, t in row["seconds"].items()), flush=True)

    def mean(rows: list[dict]) -> dict:
        keys = sorted({k for r in rows for k in r})
        return {k: round(float(np.mean([r[k] for r in rows if k in r])), 4) for k in keys}

    summary = {mode: mean([s["dice"][mode] for s in subjects]) for mode in modes}
    difference = {mode: {c: round(summary[mode][c] - summary["whole"][c], 4) for c in summary["whole"]}
                  for mode in modes if mode != "whole"}
    per_set = {st: {mode: mean([s["dice"][mode] for s in subjects if s["set"] == st]) for mode in modes}
               for st in sorted({s["set"] for s in subjects})}
    worst = {mode: min(((s["set"], s["subject"], c, round(s["dice"][mode][c] - s["dice"]["whole"][c], 4))
                        for s in subjects for c in s["dice"]["whole"]), key=lambda x: x[3], default=None)
             for mode in difference}
    return {"data": str(data), "groups": list(groups), "rule": evaluation.RULE, "studies": len(subjects),
            "whole_reused_when_not_cropped": True,
            "cropped": {"region": sum(1 for s in subjects if s["region"]["cropped"]),
                        FORCED: sum(1 for s in subjects if s["forced"]["cropped"])},
            "mean_share": {"region": round(float(np.mean([s["region"]["share"] for s in subjects])), 3),
                           FORCED: round(float(np.mean([s["forced"]["share"] for s in subjects])), 3)},
            "summary": summary, "difference_from_whole": difference,
            "largest_drop": {m: min(d.values(), default=0.0) for m, d in difference.items()},
            "worst_study_class": worst, "per_set": per_set, "subjects": subjects, "tolerance": 0.005}


def triton_timing(weights: Path, repeats: int, seed: int, threads: int, work: Path) -> dict:
    """The phantom through ``TritonSegmenter`` with spine_region true and false, interleaved."""
    from lumbarseg import phantom
    from lumbarseg.triton.client import TritonSegmenter
    from lumbarseg.triton.export import TEMPLATE, export
    from lumbarseg.triton.server import TritonServer

    os.environ["LUMBARSEG_ORT_THREADS"] = str(threads)
    repository = work / "model_repository"
    shutil.copytree(TEMPLATE, repository, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    export(weights, repository)
    series = phantom.generate(seed, shape=tb.IVDM_SHAPE, spacing=tb.IVDM_SPACING, modalities=tb.IVDM_MODALITIES).primary
    server = TritonServer(repository, http_port=tb.free_port(), grpc_port=tb.free_port(), config_name="cpu",
                          log_path=work / "triton.log")
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    regions = {}
    with server, TritonSegmenter(f"grpc://127.0.0.1:{server.grpc_port}", timeout=900) as client:
        for mode, region in MODES.items():
            regions[mode] = client.segment(series, region=region).region  # warm-up
        for _ in range(repeats):
            for mode, region in MODES.items():
                start = time.perf_counter()
                client.segment(series, region=region)
                times[mode].append(round(time.perf_counter() - start, 3))
            print("triton:", {m: t[-1] for m, t in times.items()}, flush=True)
    rows = {mode: {"segment_median_s": round(statistics.median(t), 3), "segment_s": t,
                   "region": None if regions[mode] is None else regions[mode].as_dict()} for mode, t in times.items()}
    return {"onnxruntime_threads": threads, "modes": rows,
            "ratio_region_over_whole": round(rows["region"]["segment_median_s"] / rows["whole"]["segment_median_s"], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="weights/lite")
    parser.add_argument("--data", default=os.environ.get("LUMBARSEG_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds on the 36x256x256 study")
    parser.add_argument("--threads", type=int, default=2, help="torch (and onnxruntime) threads")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed of the timed study")
    parser.add_argument("--limit", type=int, help="at most this many held-out studies (smoke runs)")
    parser.add_argument("--groups", default="holdout",
                        help="comma-separated split groups scored for Dice (default holdout; fusion or train to "
                             "choose settings without the held-out subjects)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: study, dice")
    parser.add_argument("--triton", action="store_true", help="also time the study on a real Triton server")
    parser.add_argument("--forced", action="store_true", help=f"Dice also for {FORCED} (crop whenever a spine is found)")
    parser.add_argument("--parts-from", nargs="*", default=[],
                        help="take parts (study, dice, triton) from earlier runs' JSON, with their command and load, "
                             "instead of measuring them again (parts measured in separate runs, written together)")
    parser.add_argument("--out", default=str(tb.RESULTS / "spine_region.json"))
    parser.add_argument("--note", default="", help="context to record with the results (e.g. other load)")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}

    import torch

    from lumbarseg import pipeline

    torch.set_num_threads(args.threads)
    segmenter = pipeline.Segmenter.load(args.weights)
    began = time.perf_counter()
    result: dict = {"command": " ".join(["benchmarks/spine_region.py", *(argv if argv is not None else sys.argv[1:])]),
                    "machine": tb.machine(args.threads), "note": args.note, "weights": args.weights,
                    "settings": pipeline.dump_config(segmenter.region), "repeats": args.repeats,
                    "load": {"start": tb.other_load()}}
    for path in args.parts_from:
        earlier = json.loads(Path(path).read_text())
        for part in ("study", "dice", "triton"):
            if part in earlier:
                result[part] = {**earlier[part], "command": earlier["command"], "load": earlier["load"]}
                skip.add(part)
    if "study" not in skip:
        result["study"] = study_timing(segmenter, args.repeats, args.seed)
        result["load"]["after_study"] = tb.other_load()
    if "dice" not in skip:
        result["dice"] = heldout_dice(segmenter, Path(args.data), args.limit, args.forced, tuple(args.groups.split(",")))
        result["load"]["after_dice"] = tb.other_load()
    if args.triton:
        work = Path(tempfile.mkdtemp(prefix="spine_region_"))
        try:
            result["triton"] = triton_timing(Path(args.weights), args.repeats, args.seed, args.threads, work)
        except Exception as err:  # recorded, not fatal: the in-process figures stand on their own
            result["triton"] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["load"]["end"] = tb.other_load()
    result["wall_s"] = round(time.perf_counter() - began, 1)
    tb.write_results(result, Path(args.out), markdown)
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    loads = ", ".join(f"{k} {v['load_average'][0]}" for k, v in r["load"].items())
    lines = ["# Spine-region inference against whole-volume inference", "", f"`{r['command']}`", "",
             tb.machine_line(m, r["note"]), f"Load average (1 min) during the run: {loads}.", "",
             "Settings (`RegionSettings`, the weights' `model.json` key `region`, defaults where absent): "
             + ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k != "enabled") + ".", ""]
    st = r.get("study")
    if st:
        lines += [f"## The {'x'.join(map(str, st['shape']))} four-contrast study, in process", "",
                  f"Phantom seed {st['phantom_seed']}, model grid {'x'.join(map(str, st['model_grid']))}, "
                  f"{m['threads_per_backend']} torch threads; `analysis.analyse` from the loaded study to the report; "
                  f"median of {len(st['modes']['whole']['runs']['total'])} interleaved rounds after a warm-up each."
                  + (f" Measured by `{st['command']}` (load average (1 min): "
                     + ", ".join(f"{k} {v['load_average'][0]}" for k, v in st["load"].items()) + ")."
                     if "command" in st else ""), "",
                  "| mode | networks ran on | GFLOP | segment s | report s | study s (median) |", "|---|---|---|---|---|---|"]
        for mode, row in st["modes"].items():
            region = row["region"]
            where = ("x".join(str(b - a) for a, b in region["box"]) + f" ({region['share']:.0%} of the grid)"
                     if region["cropped"] else f"whole grid ({region['status']})")
            lines.append(f"| {mode} | {where} | {row['gflop']} | {row['segment']:.2f} | {row['report']:.2f} | "
                         f"**{row['total']:.2f}** |")
        lines += ["", f"Region / whole: {st['ratio_region_over_whole']:.2f}x (study time). Target <= {st['target_s']} s "
                  "on an idle machine.", ""]
    d = r.get("dice")
    if d:
        classes = sorted(d["summary"]["whole"])
        groups = d.get("groups", ["holdout"])
        title = "Held-out Dice" if groups == ["holdout"] else f"Dice on split group(s) {', '.join(groups)} (not held out)"
        lines += [f"## {title} (fused), every mode on the same studies", "",
                  f"{d['studies']} studies of `{d['data']}` (`lumbarseg evaluate`'s scoring; split group(s) {', '.join(groups)}). The sets are cropped to "
                  "their labels plus 30 mm, so the spine fills most of each grid: with spine-region inference on "
                  f"(*region*, the settings above) the first pass cropped {d['cropped']['region']} of them (mean box share "
                  f"{d['mean_share']['region']:.2f}; the others ran whole, box over max_share; the box the first pass "
                  f"found held {d['mean_share'][FORCED]:.2f} of the grid on average). Where the region ran whole, its "
                  "result is whole-volume inference's (the same computation, run once). "
                  + (f"*{FORCED}* crops whenever a spine is found (max_share 1.0), which measures what cutting to the "
                     "box costs. " if FORCED in d["summary"] else "") + f"Scoring: {d['rule']}." + (f" Measured by `{d['command']}` (load average at start "
                                             f"{d['load']['start']['load_average'][0]})." if "command" in d else ""), "",
                  "| mode | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for mode in d["summary"]:
            lines.append(f"| {mode} | " + " | ".join(f"{d['summary'][mode].get(c, float('nan')):.4f}" for c in classes) + " |")
        for mode, diff in d["difference_from_whole"].items():
            lines.append(f"| {mode} - whole | " + " | ".join(f"{diff[c]:+.4f}" for c in classes) + " |")
        lines += ["", "Largest drop of a class mean: " + ", ".join(f"{m} {v:+.4f}" for m, v in d["largest_drop"].items())
                  + f" (tolerance {d['tolerance']}); worst single study and class: "
                  + "; ".join(f"{m} {w}" for m, w in d["worst_study_class"].items()) + ".", "",
                  "| set / subject | region | share | box found | " + " | ".join(f"{m} s" for m in d["summary"]) + " |",
                  "|---|---|---|---|" + "---|" * len(d["summary"])]
        for s in d["subjects"]:
            lines.append(f"| {s['set']}/{s['subject']} | {s['region']['status']} | {s['region']['share']:.2f} | "
                         f"{s['forced']['share']:.2f} | " + " | ".join(str(s["seconds"][m]) for m in d["summary"]) + " |")
        lines.append("")
    t = r.get("triton")
    if t:
        lines += ["## Through Triton (CPU configs, gRPC)", ""]
        if "error" in t:
            lines.append(f"Failed: {t['error'][:300]}")
        else:
            lines += [f"The same study through `TritonSegmenter.segment` ({t['onnxruntime_threads']} onnxruntime threads "
                      "per model), request parameter `spine_region` true / false, interleaved:", "",
                      "| mode | segment s (median) | runs |", "|---|---|---|"]
            for mode, row in t["modes"].items():
                lines.append(f"| {mode} | {row['segment_median_s']:.2f} | {row['segment_s']} |")
            lines.append(f"\nRegion / whole: {t['ratio_region_over_whole']:.2f}x.")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
