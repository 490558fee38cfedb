"""Segmentation latency, side by side in one run: in-process PyTorch, in-process onnxruntime,
Triton over HTTP and over gRPC (the ``spine_pipeline`` BLS model), with 1, 2 and 4 concurrent
clients; and the pipeline as a BLS model against the same pipeline as a Triton ``ensemble``
DAG. Writes ``benchmarks/results/<name>.json`` with the machine it ran on.

    .venv/bin/python benchmarks/triton_bench.py --weights weights/lite          # trained weights
    .venv/bin/python benchmarks/triton_bench.py --repeats 2 --clients 1,2      # smoke run, untrained

Every backend gets the same thread budget (``--threads``: torch, onnxruntime in-process and in
the server's python models). Latency is per study, from the source series to tissue classes on
its grid (``segment``); the BLS/ensemble comparison times the pipeline request alone (network
input in, fused and per-plane probabilities out). The Triton server runs the CPU configs (the
python backend on onnxruntime); GPU numbers need NVIDIA's container and a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_weights(folder: Path, spacing: float) -> Path:
    import torch

    from lumbarseg import pipeline, planes, tissues
    from lumbarseg.networks.fusion import fusion_net
    from lumbarseg.networks.plane_net import plane_net

    torch.manual_seed(0)
    k = tissues.NUM_TISSUES
    pipeline.save_model(folder, {p: plane_net(preset="lite", num_classes=k) for p in planes.PLANES},
                        fusion_net(num_classes=k), {"preset": "lite", "spacing_mm": spacing, "untrained": True})
    return folder


class OnnxPredictor:
    """The networks on in-process onnxruntime sessions over the exported files (same chunking
    of slice stacks as the pipeline model)."""

    def __init__(self, repository: Path, threads: int, batch: int = 32):
        import onnxruntime as ort

        from lumbarseg import planes

        self.planes, self.batch = planes, batch
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.sessions = {m: ort.InferenceSession(str(repository / m / "1" / "model.onnx"), options,
                                                 providers=["CPUExecutionProvider"])
                         for m in ("plane_sagittal", "plane_coronal", "plane_axial", "fusion")}

    def _run(self, model: str, name: str, x: np.ndarray) -> np.ndarray:
        return self.sessions[model].run(["PROBABILITIES"], {name: np.ascontiguousarray(x)})[0]

    def predict(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        per_plane = {}
        for plane in self.planes.PLANES:
            stack = self.planes.slice_stack(image, plane)
            parts = [self._run(f"plane_{plane}", "IMAGE", stack[i : i + self.batch]) for i in range(0, len(stack), self.batch)]
            per_plane[plane] = self.planes.restack(np.concatenate(parts), plane)
        k = next(iter(per_plane.values())).shape[0]
        fused = self._run("fusion", "FUSION_INPUT", self.planes.fusion_input(per_plane, image.shape[1:], k)[None])[0]
        return per_plane, fused


# -- the ensemble variant (benchmark only: the shipped repository uses the BLS model) ----------

_PREPROCESS = '''
import numpy as np
import triton_python_backend_utils as pb_utils
from lumbarseg import planes


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            image = pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(f"{p.upper()}_STACK",
                       np.ascontiguousarray(planes.slice_stack(image, p))) for p in planes.PLANES]))
        return out
'''

_POSTPROCESS = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils
from lumbarseg import planes


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            per_plane = {p: np.ascontiguousarray(planes.restack(
                pb_utils.get_input_tensor_by_name(r, f"{p.upper()}_SLICES").as_numpy(), p)) for p in planes.PLANES}
            k, *shape = per_plane["sagittal"].shape
            tensors = [pb_utils.Tensor("FUSION_INPUT", planes.fusion_input(per_plane, tuple(shape), k)[None])]
            tensors += [pb_utils.Tensor(f"{p.upper()}_PROBABILITIES", v) for p, v in per_plane.items()]
            out.append(pb_utils.InferenceResponse(tensors))
        return out
'''


def _config(name: str, body: str) -> str:
    return f'name: "{name}"\n' + textwrap.dedent(body)


def add_ensemble(repository: Path, k: int, max_slices: int) -> None:
    """``spine_ensemble``: preprocess (python) -> three plane models -> postprocess (python) ->
    fusion, as a Triton ensemble. Each plane step gets a whole slice stack as one batch, so
    its plane model needs ``max_batch_size`` >= the slice count (copies ``ens_plane_*``)."""
    planes_ = ("sagittal", "coronal", "axial")
    for plane in planes_:
        model = repository / f"ens_plane_{plane}"
        (model / "1").mkdir(parents=True)
        shutil.copy2(repository / f"plane_{plane}" / "1" / "model.onnx", model / "1")
        shutil.copy2(repository / f"plane_{plane}" / "1" / "model.py", model / "1")
        (model / "config.pbtxt").write_text(_config(model.name, f"""
            backend: "python"
            max_batch_size: {max_slices}
            input [ {{ name: "IMAGE" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }} ]
            output [ {{ name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ {k}, -1, -1 ] }} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        """))
    stacks = ",\n".join(f'{{ name: "{p.upper()}_STACK" data_type: TYPE_FP32 dims: [ -1, 3, -1, -1 ] }}' for p in planes_)
    slices = ",\n".join(f'{{ name: "{p.upper()}_SLICES" data_type: TYPE_FP32 dims: [ -1, {k}, -1, -1 ] }}' for p in planes_)
    probs = ",\n".join(f'{{ name: "{p.upper()}_PROBABILITIES" data_type: TYPE_FP32 dims: [ {k}, -1, -1, -1 ] }}'
                       for p in planes_)
    for name, code, config in (
        ("ens_preprocess", _PREPROCESS, f"""
            backend: "python"
            max_batch_size: 0
            input [ {{ name: "IMAGE" data_type: TYPE_FP32 dims: [ 3, -1, -1, -1 ] }} ]
            output [ {stacks} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        """),
        ("ens_postprocess", _POSTPROCESS, f"""
            backend: "python"
            max_batch_size: 0
            input [ {slices} ]
            output [ {{ name: "FUSION_INPUT" data_type: TYPE_FP32 dims: [ -1, {3 * (k + 1)}, -1, -1, -1 ] }},
                     {probs} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        """),
    ):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "model.py").write_text(code)
        (repository / name / "config.pbtxt").write_text(_config(name, config))
    steps = [f"""{{ model_name: "ens_preprocess" model_version: -1
                 input_map {{ key: "IMAGE" value: "IMAGE" }}
                 {" ".join(f'output_map {{ key: "{p.upper()}_STACK" value: "{p}_stack" }}' for p in planes_)} }}"""]
    steps += [f"""{{ model_name: "ens_plane_{p}" model_version: -1
                  input_map {{ key: "IMAGE" value: "{p}_stack" }}
                  output_map {{ key: "PROBABILITIES" value: "{p}_slices" }} }}""" for p in planes_]
    steps.append(f"""{{ model_name: "ens_postprocess" model_version: -1
                 {" ".join(f'input_map {{ key: "{p.upper()}_SLICES" value: "{p}_slices" }}' for p in planes_)}
                 output_map {{ key: "FUSION_INPUT" value: "fusion_input" }}
                 {" ".join(f'output_map {{ key: "{p.upper()}_PROBABILITIES" value: "{p.upper()}_PROBABILITIES" }}'
                           for p in planes_)} }}""")
    steps.append("""{ model_name: "fusion" model_version: -1
                 input_map { key: "FUSION_INPUT" value: "fusion_input" }
                 output_map { key: "PROBABILITIES" value: "PROBABILITIES" } }""")
    (repository / "spine_ensemble" / "1").mkdir(parents=True)
    (repository / "spine_ensemble" / "config.pbtxt").write_text(_config("spine_ensemble", f"""
        platform: "ensemble"
        max_batch_size: 0
        input [ {{ name: "IMAGE" data_type: TYPE_FP32 dims: [ 3, -1, -1, -1 ] }} ]
        output [ {{ name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ -1, {k}, -1, -1, -1 ] }},
                 {probs} ]
        ensemble_scheduling {{ step [ {", ".join(steps)} ] }}
    """))


# -- timing ----------------------------------------------------------------------------------

def timed(run, clients: int, repeats: int) -> dict:
    """Each of ``clients`` threads calls ``run(client_index)`` ``repeats`` times."""
    def worker(i: int) -> list[float]:
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(i)
            out.append(time.perf_counter() - start)
        return out

    run(0)  # warm-up (sessions, caches, first connection)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(t for ts in pool.map(worker, range(clients)) for t in ts)
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "median_s": round(statistics.median(latencies), 4),
            "p90_s": round(latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))], 4),
            "throughput_per_s": round(len(latencies) / wall, 3)}


def machine(threads: int) -> dict:
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": memory, "gpu": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "tritonserver": "2.51 (nvidia-pytriton 0.7.0 wheel, python backend)", "threads_per_backend": threads,
            "load_average_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="weights folder (default: untrained lite networks at --spacing)")
    parser.add_argument("--spacing", type=float, default=1.5, help="model grid for untrained weights (mm)")
    parser.add_argument("--seed", type=int, default=0, help="phantom study seed")
    parser.add_argument("--repeats", type=int, default=5, help="requests per client")
    parser.add_argument("--clients", default="1,2,4", help="concurrent clients, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="compute threads per backend")
    parser.add_argument("--out", default=str(RESULTS / "triton_bench.json"))
    parser.add_argument("--note", default="", help="context to record with the results (e.g. other load)")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["LUMBARSEG_ORT_THREADS"] = str(args.threads)

    import torch

    from lumbarseg import phantom, pipeline, planes, tissues
    from lumbarseg.triton.client import TritonSegmenter
    from lumbarseg.triton.export import TEMPLATE, export
    from lumbarseg.triton.server import TritonServer

    torch.set_num_threads(args.threads)
    clients = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="triton_bench_"))
    try:
        weights = Path(args.weights) if args.weights else untrained_weights(work / "weights", args.spacing)
        repository = work / "model_repository"
        shutil.copytree(TEMPLATE, repository, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
        print("exporting ...", flush=True)
        export(weights, repository)
        series = phantom.generate(args.seed).primary
        segmenter = pipeline.Segmenter.load(weights)
        image = planes.resample(planes.network_input(series),
                                planes.grid_size(planes.to_canonical(series), segmenter.spacing), "trilinear")
        add_ensemble(repository, tissues.NUM_TISSUES, max(image.shape[1:]))
        onnx = OnnxPredictor(repository, args.threads)
        results = {"note": args.note, "machine": machine(args.threads), "study": {"seed": args.seed, "shape": list(series.shape),
                   "model_grid": list(image.shape[1:]), "spacing_mm": segmenter.spacing},
                   "weights": str(args.weights or "untrained lite"), "repeats": args.repeats,
                   "segment": {}, "pipeline_model": {}}
        server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), config_name="cpu",
                              log_path=work / "triton.log")
        with server:
            urls = {"triton_http": f"http://{server.url}", "triton_grpc": f"grpc://127.0.0.1:{server.grpc_port}"}
            remote = {name: TritonSegmenter(url) for name, url in urls.items()}  # a connection per thread
            backends = {
                "torch": lambda i: segmenter.segment(series),
                "onnxruntime": lambda i: pipeline.segment_series(series, segmenter.spacing, onnx.predict),
                **{name: (lambda i, client=client: client.segment(series)) for name, client in remote.items()},
            }
            for name, run in backends.items():
                results["segment"][name] = [timed(run, c, args.repeats) for c in clients]
                print(name, results["segment"][name], flush=True)
            # BLS vs ensemble: the pipeline request alone, on raw gRPC clients (same input, same outputs).
            import tritonclient.grpc as grpcclient

            outputs = ["PROBABILITIES", *(f"{p.upper()}_PROBABILITIES" for p in planes.PLANES)]
            raw = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")  # thread-safe (grpcio)

            def request(model: str) -> dict[str, np.ndarray]:
                tensor = grpcclient.InferInput("IMAGE", list(image.shape), "FP32")
                tensor.set_data_from_numpy(image)
                answer = raw.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
                return {n: answer.as_numpy(n) for n in outputs}

            for model in ("spine_pipeline", "spine_ensemble"):
                results["pipeline_model"][model] = [timed(lambda i: request(model), c, args.repeats) for c in clients]
                print(model, results["pipeline_model"][model], flush=True)
            bls, ensemble = request("spine_pipeline"), request("spine_ensemble")
            ensemble["PROBABILITIES"] = ensemble["PROBABILITIES"][0]  # the fusion step's batch axis
            results["pipeline_model"]["max_difference_bls_vs_ensemble"] = float(
                max(np.abs(bls[n] - ensemble[n]).max() for n in outputs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
