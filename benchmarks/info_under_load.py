"""How fast the MONAI Label app answers ``/info/`` and ``/health/`` while N infers run (issue 16,
item 7: before the fix, ``/info/`` waited for every queued infer).

Starts ``monailabel start_server`` for a copy of ``--app`` (default: this checkout's app) on
loopback with phantom studies, fires ``--concurrent`` infer requests at once, probes ``/info/``
every 0.1 s until they are all answered, and records the latency median / p90 / max, the infer
statuses (200, or 503 beyond the queue bound) and wall times, with the machine. Pass the app of
an older checkout as ``--app`` (and ``--label``) to compare before and after side by side.

    .venv/bin/python benchmarks/info_under_load.py [--concurrent 20] [--app DIR --label before]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lumbarseg import io, phantom, viewer  # noqa: E402
from triton_bench import machine, machine_line  # noqa: E402

from conftest import free_port, untrained_weights  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _get(url: str) -> tuple[int, float]:
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=600) as r:
            status = r.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.monotonic() - began


def _infer(url: str) -> tuple[int, float]:
    began = time.monotonic()
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=1800) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.monotonic() - began


def run(app: Path, label: str, concurrent: int, spacing: float, conf: dict[str, str], work: Path) -> dict:
    studies = work / "studies"
    studies.mkdir(parents=True)
    ids = []
    for seed in (101, 102, 103):
        study = phantom.generate(seed, modalities=("t2w", "t1w"))
        io.save_image(study.primary, studies / f"{study.subject}.nii.gz")
        ids.append(study.subject)
    copy = work / "app"
    shutil.copytree(app, copy, ignore=shutil.ignore_patterns("model", "__pycache__"))
    untrained_weights(copy / "model" / "lumbar_spine", spacing=spacing)
    server = viewer.MonaiLabel(copy, studies, port=free_port(), conf=conf, log=work / "server.log",
                               env={"OMP_NUM_THREADS": "1"})
    server.start(timeout=600)
    try:
        idle = [_get(server.url + "/info/")[1] for _ in range(5)]
        done = threading.Event()
        info: list[float] = []
        health: list[int] = []

        def probe():
            while not done.is_set():
                status, seconds = _get(server.url + "/info/")
                info.append(seconds)
                health.append(_get(server.url + "/health/")[0])
                time.sleep(0.1)

        began = time.monotonic()
        with ThreadPoolExecutor(concurrent) as pool:
            futures = [pool.submit(_infer, f"{server.url}/infer/lumbar_spine?image={ids[i % 3]}&output=json")
                       for i in range(concurrent)]
            time.sleep(0.3)
            prober = threading.Thread(target=probe)
            prober.start()
            results = [f.result() for f in futures]
        done.set()
        prober.join()
        wall = time.monotonic() - began
    finally:
        server.stop()
    statuses = [s for s, _ in results]
    ok = sorted(t for s, t in results if s == 200)
    return {"label": label, "app": str(app), "conf": conf, "concurrent_infers": concurrent,
            "study_shape": list(phantom.generate(101, modalities=("t2w", "t1w")).primary.image.shape),
            "model_spacing_mm": spacing, "infer_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "infer_wall_s": round(wall, 2), "infer_latency_s": {"min": round(ok[0], 2) if ok else None,
                                                                "max": round(ok[-1], 2) if ok else None},
            "info_idle_median_s": round(statistics.median(idle), 4), "info_probes": len(info),
            "info_median_s": round(statistics.median(info), 4) if info else None,
            "info_p90_s": round(sorted(info)[int(0.9 * (len(info) - 1))], 4) if info else None,
            "info_max_s": round(max(info), 4) if info else None,
            "health_statuses": {str(s): health.count(s) for s in sorted(set(health))}}


def markdown(result: dict) -> str:
    rows = ["| app | conf | infers | statuses | wall s | /info/ idle median s | probes | /info/ median s | p90 s | "
            "max s | /health/ |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        rows.append(f"| {r['label']} | {r['conf'] or 'defaults'} | {r['concurrent_infers']} | {r['infer_statuses']} | "
                    f"{r['infer_wall_s']} | {r['info_idle_median_s']} | {r['info_probes']} | {r['info_median_s']} | "
                    f"{r['info_p90_s']} | {r['info_max_s']} | {r['health_statuses']} |")
    return (f"# /info/ latency while infers run\n\n{machine_line(result['machine'], result['note'])}\n\n"
            f"Studies: two-contrast phantoms {result['runs'][0]['study_shape']} (channels, I, J, K); untrained lite "
            f"networks at {result['runs'][0]['model_spacing_mm']} mm; in-process backend.\n\n" + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=3.0, help="model grid of the untrained networks (mm)")
    parser.add_argument("--app", action="append", help="app folder(s) to compare (default: this checkout's)")
    parser.add_argument("--label", action="append", help="a label per --app")
    parser.add_argument("--conf", action="append", default=[], help="key=value for --conf of every server")
    parser.add_argument("--out", default=str(RESULTS / "info_under_load.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    apps = [Path(a) for a in args.app] if args.app else [REPO / "apps" / "lumbar_spine"]
    labels = args.label or [a.parent.parent.name if a != REPO / "apps" / "lumbar_spine" else "this checkout"
                            for a in apps]
    conf = dict(c.split("=", 1) for c in args.conf)
    result = {"machine": machine(1), "note": args.note, "runs": []}
    for app, label in zip(apps, labels):
        with tempfile.TemporaryDirectory() as work:
            result["runs"].append(run(app, label, args.concurrent, args.spacing, conf, Path(work)))
            print(json.dumps(result["runs"][-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
