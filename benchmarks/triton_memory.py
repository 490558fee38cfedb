"""Peak memory of the Triton server (tritonserver and its python stubs, CPU configs) per
``spine_pipeline`` request, against the request's voxel count: the measurement behind the
pipeline's ``max_voxels`` / ``max_extent`` limits and the memory budget they guarantee.

Each request asks for every output (fused and per-plane probabilities and classes: what the
MONAI Label app asks for), one at a time, on a fresh server per size (so a size's peak is not
hidden by an earlier, larger one). Peak summed PSS (pages shared between tritonserver and the
stubs counted once; what the tree really occupies) and summed RSS (shared pages counted per
process) are sampled every 0.25 s.

    .venv/bin/python benchmarks/triton_memory.py --repository model_repository \\
        --shapes 32x160x160,48x213x213,64x256x256,128x256x256 --out benchmarks/results/triton_memory.json
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_bench as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUTPUTS = ["PROBABILITIES", "CLASSES", "SAGITTAL_PROBABILITIES", "CORONAL_PROBABILITIES", "AXIAL_PROBABILITIES"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def markdown(result: dict) -> str:
    lines = ["# Triton server memory per spine_pipeline request", "",
             tb.machine_line(result["machine"], result["note"]), "",
             f"Every output requested, over {result['protocol']}; a fresh server per size, "
             f"{result.get('instances', 1)} instance(s) of every model, as many requests of the size in flight at once; "
             f"idle server "
             f"{result['idle_pss_mib']} MiB PSS. Fit: peak PSS = {result['fit']['base_mib']:.0f} MiB + "
             f"{result['fit']['bytes_per_voxel']:.0f} bytes per voxel.", "",
             "| IMAGE shape | voxels | peak PSS MiB | peak RSS MiB (shared pages per process) | seconds |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| 3x{'x'.join(map(str, r['shape']))} | {r['voxels']:,} | {r['peak_pss_mib']} | {r['peak_rss_mib']} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="model_repository", help="an exported repository (copied)")
    parser.add_argument("--shapes", default="32x160x160,48x213x213,64x256x256", help="X x Y x Z per request")
    parser.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads per model instance")
    parser.add_argument("--instances", type=int, default=1,
                        help="instances per model; as many requests of each size are sent at once")
    parser.add_argument("--out", default=str(RESULTS / "triton_memory.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)

    from lumbarseg.triton.client import TritonSegmenter
    from lumbarseg.triton.server import TritonServer, set_config_parameter

    key = secrets.token_urlsafe(16)
    work = Path(tempfile.mkdtemp(prefix="triton_memory_"))
    repository = work / "model_repository"
    shutil.copytree(args.repository, repository, ignore=shutil.ignore_patterns("__pycache__"))
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    biggest = max(int(np.prod(s)) for s in shapes)
    for config in (repository / "spine_pipeline").glob("**/*.pbtxt"):  # let every measured size through
        text = set_config_parameter(config.read_text(), "max_voxels", str(max(biggest, 1)))
        config.write_text(set_config_parameter(text, "max_extent", str(max(max(s) for s in shapes))))
    rows, idle = [], None
    machine = tb.machine(args.threads)
    for shape in shapes:
        server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), config_name="cpu",
                              log_path=work / "triton.log", key=key, instances=args.instances, threads=args.threads)
        server.start(timeout=300)
        try:
            url = f"grpc://127.0.0.1:{server.grpc_port}" if args.protocol == "grpc" else f"http://{server.url}"
            clients = [TritonSegmenter(url, key=key, timeout=3600, retries=0) for _ in range(args.instances)]
            with ThreadPoolExecutor(args.instances) as pool:
                # warm: every instance of every model has run once
                list(pool.map(lambda c: c.infer(np.zeros((3, 4, 4, 4), np.float32), ["CLASSES"]), clients))
                time.sleep(1)
                idle = tb.tree_memory(server.process.pid)["pss_mib"] if idle is None else idle
                image = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
                start = time.monotonic()
                with tb.RssSampler({"triton": server.process.pid}, pss=True) as peak:
                    list(pool.map(lambda c: c.infer(image, OUTPUTS), clients))  # one request per instance, in flight together
                seconds = time.monotonic() - start
                del image
            for client in clients:
                client.close()
        finally:
            server.stop()
        row = {"shape": list(shape), "voxels": int(np.prod(shape)), "peak_pss_mib": peak.pss["triton"], "peak_rss_mib": round(peak.peak["triton"] / 2**20),
               "seconds": seconds}
        rows.append(row)
        print(row, flush=True)
    voxels = np.array([r["voxels"] for r in rows], float)
    pss = np.array([r["peak_pss_mib"] for r in rows], float)
    slope, base = np.polyfit(voxels, pss, 1) if len(rows) > 1 else (pss[0] / voxels[0], 0.0)
    result = {"protocol": args.protocol, "instances": args.instances, "threads": args.threads, "note": args.note, "machine": machine, "idle_pss_mib": idle, "rows": rows,
              "fit": {"base_mib": float(base), "bytes_per_voxel": float(slope * 2**20)}}
    tb.write_results(result, Path(args.out), markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
