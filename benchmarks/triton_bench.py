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
python backend on onnxruntime; the pipeline runs the fusion itself); a second server runs the same
configs with the pipeline calling the fusion model, as the GPU configs do (``triton_grpc_fusion_bls``).
GPU numbers need NVIDIA's container and a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import textwrap
import threading
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

    def __init__(self, repository: Path, threads: int, spacing: float, batch: int = 32, spinning: bool = True):
        import onnxruntime as ort

        from lumbarseg import planes

        self.planes, self.batch, self.spacing = planes, batch, spacing
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        if not spinning:  # idle threads sleep: another backend in the same process gets the cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        fused = self._run("fusion", "FUSION_INPUT", self.planes.fusion_input(per_plane, image.shape[1:], k, spacing=self.spacing)[None])[0]
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
    def initialize(self, args):
        self.spacing = float(json.loads(args["model_config"])["parameters"]["spacing_mm"]["string_value"])

    def execute(self, requests):
        out = []
        for r in requests:
            per_plane = {p: np.ascontiguousarray(planes.restack(
                pb_utils.get_input_tensor_by_name(r, f"{p.upper()}_SLICES").as_numpy(), p)) for p in planes.PLANES}
            k, *shape = per_plane["sagittal"].shape
            tensors = [pb_utils.Tensor("FUSION_INPUT", planes.fusion_input(per_plane, tuple(shape), k, spacing=self.spacing)[None])]
            tensors += [pb_utils.Tensor(f"{p.upper()}_PROBABILITIES", v) for p, v in per_plane.items()]
            out.append(pb_utils.InferenceResponse(tensors))
        return out
'''


def _config(name: str, body: str) -> str:
    return f'name: "{name}"\n' + textwrap.dedent(body)


def add_ensemble(repository: Path, k: int, max_slices: int, spacing: float) -> None:
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
            parameters {{ key: "spacing_mm" value: {{ string_value: "{spacing:g}" }} }}
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

def summary(latencies: list[float], wall: float, clients: int) -> dict:
    latencies = sorted(latencies)
    return {"clients": clients, "requests": len(latencies), "median_s": round(statistics.median(latencies), 4),
            "p90_s": round(latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))], 4),
            "throughput_per_s": round(len(latencies) / wall, 3)}


def timed(run, clients: int, repeats: int, warm: bool = True) -> dict:
    """Each of ``clients`` threads calls ``run(client_index)`` ``repeats`` times (after one
    warm-up call unless ``warm`` is False)."""
    def worker(i: int) -> list[float]:
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(i)
            out.append(time.perf_counter() - start)
        return out

    if warm:
        run(0)  # warm-up (sessions, caches, first connection)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for ts in pool.map(worker, range(clients)) for t in ts]
    return summary(latencies, time.perf_counter() - start, clients)


def interleaved(backends: dict, repeats: int) -> dict:
    """One client: each backend warmed up once, then ``repeats`` rounds in which every backend
    segments the study once, so a change of the machine's load hits all of them; each round in
    a (seeded) shuffled order, since in a fixed order a backend paid for the one run before it
    (``triton_grpc_fused_only``, run after the probabilities variant, came out slower than the
    full request)."""
    for run in backends.values():
        run(0)
    latencies: dict[str, list[float]] = {name: [] for name in backends}
    order = list(backends)
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            backends[name](0)
            latencies[name].append(time.perf_counter() - start)
    return {name: summary(ts, sum(ts), 1) for name, ts in latencies.items()}


# -- memory ----------------------------------------------------------------------------------

def _tree(pid: int) -> list:
    """A process and all its descendants (Triton's python stubs, MONAI Label's workers)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    """Resident bytes of a process tree (:func:`_tree`)."""
    import psutil

    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def tree_memory(pid: int) -> dict:
    """Per process of a tree: RSS, PSS and USS in MiB. Summed RSS counts pages shared between
    processes (libraries, Triton's shared-memory regions with its python stubs) once per
    process; summed PSS splits each shared page between its users, so it adds up to what the
    tree really occupies."""
    import psutil

    rows = []
    for p in _tree(pid):
        try:
            info = p.memory_full_info()
            name = " ".join(p.cmdline()[:2])[-90:]
        except psutil.Error:
            continue
        rows.append({"process": name, "rss_mib": round(info.rss / 2**20), "pss_mib": round(info.pss / 2**20),
                     "uss_mib": round(info.uss / 2**20)})
    return {"processes": rows, **{key: sum(r[key] for r in rows) for key in ("rss_mib", "pss_mib", "uss_mib")}}


class RssSampler:
    """Samples :func:`tree_rss` of some process trees every ``interval`` s in a thread; keeps
    the peak of each tree (bytes, ``peak``) and of their sum; with ``pss``, also each tree's
    peak summed PSS (MiB, ``pss``; :func:`tree_memory`, which reads every process's smaps)."""

    def __init__(self, pids: dict[str, int], interval: float = 0.25, *, pss: bool = False):
        self.pids, self.interval, self.with_pss = pids, interval, pss
        self.peak = {name: 0 for name in pids}
        self.pss = {name: 0 for name in pids}
        self.peak_sum = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.with_pss:
                trees = {name: tree_memory(pid) for name, pid in self.pids.items()}
                now = {name: tree["rss_mib"] * 2**20 for name, tree in trees.items()}
                self.pss = {name: max(self.pss[name], tree["pss_mib"]) for name, tree in trees.items()}
            else:
                now = {name: tree_rss(pid) for name, pid in self.pids.items()}
            for name, value in now.items():
                self.peak[name] = max(self.peak[name], value)
            self.peak_sum = max(self.peak_sum, sum(now.values()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self) -> dict:
        return {**{f"{name}_peak_mib": round(v / 2**20) for name, v in self.peak.items()},
                "sum_peak_mib": round(self.peak_sum / 2**20)}


def other_load(sample_s: float = 1.0, top: int = 8) -> dict:
    """Load average and the busiest processes not belonging to this benchmark, as context."""
    import psutil

    own = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in own]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    busy = []
    for p in procs:
        try:
            busy.append((p.cpu_percent(None), " ".join(p.info["cmdline"] or [p.info["name"] or "?"])[:120]))
        except psutil.Error:
            pass
    busy.sort(reverse=True)
    return {"load_average": [round(x, 2) for x in os.getloadavg()],
            "other_processes_cpu_percent": [[round(c, 1), cmd] for c, cmd in busy[:top] if c > 1.0]}


# -- the MONAI Label app in front of the Triton server -----------------------------------------

def app_memory(work: Path, weights: Path, series, triton_url: str, triton_pid: int, repeats: int) -> dict:
    """``monailabel start_server`` with the app on the Triton backend; RSS of its process tree
    and of Triton's while it serves ``/infer/lumbar_spine`` on the benchmark study."""
    import subprocess
    import urllib.error
    import urllib.request

    from lumbarseg import io

    repo = Path(__file__).resolve().parents[1]
    app = work / "app"
    shutil.copytree(repo / "apps" / "lumbar_spine", app, ignore=shutil.ignore_patterns("model", "__pycache__"))
    shutil.copytree(weights, app / "model" / "lumbar_spine")
    studies = work / "studies"
    studies.mkdir()
    io.save_image(series, studies / "bench.nii.gz")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MONAI_LABEL_TRACKING_ENABLED": "false",
           "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    log = work / "monailabel.log"
    process = subprocess.Popen([str(bin_dir / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
                                "--host", "127.0.0.1", "--port", str(port), "--conf", "backend", "triton",
                                "--conf", "triton_url", triton_url],
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    out: dict = {"command": f"monailabel start_server --app apps/lumbar_spine --studies <1 phantom> --conf backend triton "
                            f"--conf triton_url {triton_url}"}
    try:
        started = time.perf_counter()
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"monailabel exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/info/", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"monailabel not up after 300 s: {log.read_text()[-2000:]}")
            time.sleep(1)
        out["startup_s"] = round(time.perf_counter() - started, 1)
        out["app_idle_mib"] = round(tree_rss(process.pid) / 2**20)
        out["triton_idle_mib"] = round(tree_rss(triton_pid) / 2**20)
        latencies = []
        with RssSampler({"app": process.pid, "triton": triton_pid}) as sampler:
            for _ in range(repeats):
                start = time.perf_counter()
                req = urllib.request.Request(url + "/infer/lumbar_spine?image=bench", data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=900) as r:
                    r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - start)
        out.update(sampler.mib())
        out["infer_latency_s"] = [round(t, 2) for t in latencies]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
    return out


# -- the 36 x 256 x 256 four-modality study in process -----------------------------------------

IVDM_SHAPE = (36, 256, 256)  # (LR, AP, SI) voxels, IVDM3Seg's grid
IVDM_SPACING = (2.0, 1.25, 1.25)
IVDM_MODALITIES = ("dixon_in", "dixon_opp", "dixon_fat", "dixon_water")


def in_process_study(weights: Path, seed: int, repeats: int, threads: int) -> tuple[dict, object, np.ndarray]:
    """``analysis.analyse`` (three planes + fusion + post-processing + report) with
    ``Segmenter`` on a phantom at 36x256x256 with four modalities; median of ``repeats`` after
    a warm-up, split into the networks and the rest, and a cProfile of one run."""
    import cProfile
    import io as _io
    import pstats

    import torch

    from lumbarseg import analysis, phantom, pipeline, planes

    study = phantom.generate(seed, shape=IVDM_SHAPE, spacing=IVDM_SPACING, modalities=IVDM_MODALITIES)
    series = study.primary
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        segmenter = pipeline.Segmenter.load(weights)
        image = planes.model_input(series, segmenter.spacing)
        analysis.analyse(study, segmenter.segment)  # warm-up
        totals, networks = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            analysis.analyse(study, segmenter.segment)
            totals.append(time.perf_counter() - start)
            start = time.perf_counter()
            segmenter.predict(image)
            networks.append(time.perf_counter() - start)
        profile = cProfile.Profile()
        profile.enable()
        analysis.analyse(study, segmenter.segment)
        profile.disable()
        text = _io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
        top = [line.rstrip() for line in text.getvalue().splitlines() if line.strip()][-26:]
    finally:
        torch.set_num_threads(before)
    result = {"shape": list(series.shape), "stored_as": list(series.image.shape), "spacing_mm": list(IVDM_SPACING),
              "modalities": list(IVDM_MODALITIES), "model_grid": list(image.shape[1:]), "torch_threads": threads,
              "repeats": repeats, "analyse_median_s": round(statistics.median(totals), 3),
              "analyse_s": [round(t, 3) for t in totals], "networks_median_s": round(statistics.median(networks), 3),
              "target_s": 5.0, "profile_top_cumulative": top}
    return result, segmenter, image


# -- the lower bound ---------------------------------------------------------------------------

def pipeline_flops(segmenter, image: np.ndarray) -> int:
    """FLOPs of the three plane networks and the fusion on one network input (convolutions and
    matmuls, a multiply-add counted as 2), by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        segmenter.predict(image)
    return int(counter.get_total_flops())


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an ``n x n`` float32 matmul on ``threads`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return round(2 * n**3 / statistics.median(times) / 1e9, 2)


# The CPU's vector instructions: machines that all call themselves "AMD EPYC, 2 cores" have run the
# same study's networks 2.6x apart (12.1 s, then 4.7 s with AVX-512 and VNNI), so a result names them.
VECTOR_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def machine(threads: int) -> dict:
    import onnxruntime
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None)
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    return {"cpu": cpu, "cpu_features": [f for f in VECTOR_FEATURES if f in flags], "cores": os.cpu_count(),
            "memory_mib": memory, "gpu": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "tritonserver": "2.51 (nvidia-pytriton 0.7.0 wheel, python backend)", "threads_per_backend": threads,
            "load_average_at_start": os.getloadavg()}


def cpu_features(m: dict) -> str:
    """The CPU's vector features as recorded by :func:`machine`, " (avx2, ...)"; empty for results
    recorded before they were."""
    return f" ({', '.join(m['cpu_features']) or 'no AVX2'})" if "cpu_features" in m else ""


def machine_line(m: dict, note: str) -> str:
    """The machine and its load, one Markdown line (for the results files beside this one)."""
    return (f"Machine: {m['cpu']}{cpu_features(m)}, {m['cores']} cores, {m['memory_mib']} MiB, torch {m['torch']}; load average at start "
            f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. {note}")


def write_results(result: dict, out: Path, markdown) -> None:
    """``out`` as JSON and its Markdown rendering beside it (``.md``), printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="weights folder (default: untrained lite networks at --spacing)")
    parser.add_argument("--spacing", type=float, default=1.5, help="model grid for untrained weights (mm)")
    parser.add_argument("--seed", type=int, default=0, help="phantom study seed")
    parser.add_argument("--repeats", type=int, default=5, help="one-client rounds (every backend once per round)")
    parser.add_argument("--concurrent-repeats", type=int, default=1, help="requests per client with 2+ clients")
    parser.add_argument("--clients", default="1,2,4", help="concurrent clients, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="compute threads per backend")
    parser.add_argument("--repository", help="an exported model repository of --weights to copy (default: export "
                                                 "the weights into a temporary copy of the committed one)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: ensemble, app, study, flops, "
                                                   "fusion_bls")
    parser.add_argument("--study-repeats", type=int, default=3, help="runs of the 36x256x256 study (after a warm-up)")
    parser.add_argument("--out", default=str(RESULTS / "triton_bench.json"), help="results JSON (and .md beside it)")
    parser.add_argument("--note", default="", help="context to record with the results (e.g. other load)")
    args = parser.parse_args(argv)
    skip = {part for part in args.skip.split(",") if part}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` still stops the servers it started
    os.environ["OMP_NUM_THREADS"] = os.environ["LUMBARSEG_ORT_THREADS"] = str(args.threads)

    import torch

    from lumbarseg import phantom, pipeline, planes, tissues
    from lumbarseg.triton.client import TritonSegmenter
    from lumbarseg.triton.export import CPU_CONFIG, FUSION_IN_PIPELINE, PIPELINE, TEMPLATE, export
    from lumbarseg.triton.server import TritonServer, set_config_parameter

    torch.set_num_threads(args.threads)
    clients = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="triton_bench_"))
    began = time.perf_counter()
    results: dict = {}
    load: dict[str, dict] = {"start": other_load()}
    print("load at start:", load["start"], flush=True)
    try:
        weights = Path(args.weights) if args.weights else untrained_weights(work / "weights", args.spacing)
        repository = work / "model_repository"
        if args.repository:  # already exported: copy it, ONNX files included
            shutil.copytree(args.repository, repository, ignore=shutil.ignore_patterns("__pycache__", "tmp*"))
        else:
            shutil.copytree(TEMPLATE, repository, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
            print("exporting ...", flush=True)
            export(weights, repository)
        servers = {"triton_grpc": repository}
        if "fusion_bls" not in skip:  # the GPU configs' path: the pipeline calls the fusion model
            servers["triton_grpc_fusion_bls"] = work / "model_repository_fusion_bls"
            shutil.copytree(repository, servers["triton_grpc_fusion_bls"])
            config = servers["triton_grpc_fusion_bls"] / PIPELINE / CPU_CONFIG
            config.write_text(set_config_parameter(config.read_text(), FUSION_IN_PIPELINE, "false"))
        series = phantom.generate(args.seed).primary
        segmenter = pipeline.Segmenter.load(weights)
        image = planes.model_input(series, segmenter.spacing)
        if "ensemble" not in skip:
            add_ensemble(repository, tissues.NUM_TISSUES, max(image.shape[1:]), segmenter.spacing)
        onnx = OnnxPredictor(repository, args.threads, segmenter.spacing)
        results = {"note": args.note, "command": " ".join(["benchmarks/triton_bench.py", *(argv or sys.argv[1:])]),
                   "machine": machine(args.threads),
                   "study": {"seed": args.seed, "shape": list(series.shape), "modalities": list(series.modalities),
                             "model_grid": list(image.shape[1:]), "spacing_mm": segmenter.spacing},
                   "weights": str(args.weights or "untrained lite"), "repeats": args.repeats,
                   "concurrent_repeats": args.concurrent_repeats, "segment": {}, "pipeline_model": {}, "load": load}
        started = {name: TritonServer(path, http_port=free_port(), grpc_port=free_port(), config_name="cpu",
                                      log_path=work / f"{name}.log") for name, path in servers.items()}
        server = started["triton_grpc"]
        with contextlib.ExitStack() as stack:
            for each in started.values():
                stack.enter_context(each)
            pid = server.process.pid
            memory = results["memory"] = {"triton_idle_mib": round(tree_rss(pid) / 2**20),
                                          "bench_process_idle_mib": round(tree_rss(os.getpid()) / 2**20)}
            # inference is gRPC only
            urls = {name: f"grpc://127.0.0.1:{each.grpc_port}" for name, each in started.items()}
            remote = {name: TritonSegmenter(url) for name, url in urls.items()}  # a connection per thread
            backends = {
                "torch": lambda i: segmenter.segment(series),
                "onnxruntime": lambda i: pipeline.segment_series(series, segmenter.spacing, onnx.predict),
                **{name: (lambda i, client=client: client.segment(series)) for name, client in remote.items()},
                # what the outputs cost: probabilities (9 float32 per voxel, not a uint8 class map)
                # per plane and fused, resampled in the client; and no plane output at all
                "triton_grpc_probabilities": lambda i: remote["triton_grpc"].segment(series, probabilities=True),
                "triton_grpc_fused_only": lambda i: remote["triton_grpc"].segment(series, with_planes=False),
            }
            # One client, backends interleaved round by round: the latency comparison.
            with RssSampler({"triton": pid}) as sampler:
                single = interleaved(backends, args.repeats)
                results["round_order"] = "in a shuffled order"
                print("1 client:", single, flush=True)
                load["after_one_client"] = other_load()
                for name, run in backends.items():
                    results["segment"][name] = [single[name]] + [
                        timed(run, c, args.concurrent_repeats, warm=False) for c in clients if c > 1]
                    print(name, results["segment"][name], flush=True)
            memory["triton_peak_mib"] = sampler.mib()["triton_peak_mib"]
            load["after_concurrency"] = other_load()
            results["ratio_triton_over_onnxruntime"] = {
                name: round(results["segment"][name][0]["median_s"] / results["segment"]["onnxruntime"][0]["median_s"], 3)
                for name in backends if name.startswith("triton")}
            if "app" not in skip:
                print("MONAI Label app on Triton ...", flush=True)
                try:
                    results["app"] = app_memory(work, weights, series, urls["triton_grpc"], pid, repeats=2)
                    results["app"]["stack_peak_mib"] = results["app"]["sum_peak_mib"]
                except Exception as err:  # recorded, not fatal: the latency figures stand on their own
                    results["app"] = {"error": f"{type(err).__name__}: {err}"}
                print("app", {k: v for k, v in results["app"].items() if k != "command"}, flush=True)
            if "ensemble" not in skip:
                # BLS vs ensemble: the pipeline request alone, on raw gRPC clients (same input, same outputs).
                import tritonclient.grpc as grpcclient

                from lumbarseg.triton.server import admin_headers

                outputs = ["PROBABILITIES", *(f"{p.upper()}_PROBABILITIES" for p in planes.PLANES)]
                raw = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")  # thread-safe (grpcio)

                def request(model: str) -> dict[str, np.ndarray]:
                    tensor = grpcclient.InferInput("IMAGE", list(image.shape), "FP32")
                    tensor.set_data_from_numpy(image)
                    answer = raw.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
                                       headers=admin_headers(server.key))  # inference needs the admin key
                    return {n: answer.as_numpy(n) for n in outputs}

                for model in ("spine_pipeline", "spine_ensemble"):
                    results["pipeline_model"][model] = [timed(lambda i: request(model), c, args.concurrent_repeats)
                                                        for c in clients]
                    print(model, results["pipeline_model"][model], flush=True)
                bls, ensemble = request("spine_pipeline"), request("spine_ensemble")
                ensemble["PROBABILITIES"] = ensemble["PROBABILITIES"][0]  # the fusion step's batch axis
                results["pipeline_model"]["max_difference_bls_vs_ensemble"] = float(
                    max(np.abs(bls[n] - ensemble[n]).max() for n in outputs))
        if "flops" not in skip:
          try:
            flops = pipeline_flops(segmenter, image)
            peak = {t: matmul_gflops(t) for t in sorted({args.threads, os.cpu_count() or 1})}
            achieved = flops / results["segment"]["torch"][0]["median_s"] / 1e9
            results["lower_bound"] = {
                "flops_per_study": flops, "gflop_per_study": round(flops / 1e9, 2),
                "matmul_gflops_by_threads": peak,
                "torch_achieved_gflops": round(achieved, 2),
                "fraction_of_matmul_peak": round(achieved / peak[args.threads], 3),
                "floor_s_at_matmul_peak": round(flops / 1e9 / peak[args.threads], 3)}
            print("lower bound", results["lower_bound"], flush=True)
          except Exception as err:
            results["lower_bound_error"] = f"{type(err).__name__}: {err}"
            skip.add("flops")
        if "study" not in skip:
          try:
            threads = os.cpu_count() or 1
            print(f"36x256x256 four-modality study in process ({threads} threads) ...", flush=True)
            study, big_segmenter, big_image = in_process_study(weights, args.seed, args.study_repeats, threads)
            if "flops" not in skip:
                flops = pipeline_flops(big_segmenter, big_image)
                peak = results["lower_bound"]["matmul_gflops_by_threads"][threads]
                study.update({"gflop_per_study": round(flops / 1e9, 2),
                              "networks_achieved_gflops": round(flops / 1e9 / study["networks_median_s"], 2),
                              "floor_s_at_matmul_peak": round(flops / 1e9 / peak, 3)})
            results["study_36x256x256"] = study
            print("study", {k: v for k, v in study.items() if k != "profile_top_cumulative"}, flush=True)
          except Exception as err:
            results["study_36x256x256_error"] = f"{type(err).__name__}: {err}"
        load["end"] = other_load()
    except BaseException:
        if results:
            Path(args.out).with_suffix(".partial.json").write_text(json.dumps(results, indent=1, default=str))
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = round(time.perf_counter() - began, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def markdown(r: dict) -> str:
    """The results as Markdown tables (what docs/performance.md quotes)."""
    m = r["machine"]
    lines = [f"# Segmentation benchmark: {r['weights']}", "",
             f"`{r.get('command', '')}`", "",
             f"Machine: {m['cpu']}{cpu_features(m)}, {m['cores']} cores, {m['memory_mib'] / 1024:.1f} GiB RAM, no GPU; "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, Triton {m['tritonserver']}; "
             f"{m['threads_per_backend']} compute thread(s) per backend.", ""]
    loads = ", ".join(f"{k} {v['load_average'][0]}" for k, v in r.get("load", {}).items())
    lines += [f"Load average (1 min) during the run: {loads}. {r.get('note', '')}", ""]
    st = r["study"]
    lines += [f"Study: phantom seed {st['seed']}, {'x'.join(map(str, st['shape']))} voxels, {len(st['modalities'])} "
              f"modalities, model grid {'x'.join(map(str, st['model_grid']))} at {st['spacing_mm']} mm. One client: "
              f"{r['repeats']} interleaved rounds (every backend once per round, "
              f"{r.get('round_order', 'in a fixed order')}, after one warm-up each); 2 and 4 "
              f"clients: {r['concurrent_repeats']} request(s) per client.", "",
             "| backend | clients | requests | median s | p90 s | studies/s |", "|---|---|---|---|---|---|"]
    for name, rows in r["segment"].items():
        for row in rows:
            lines.append(f"| {name} | {row['clients']} | {row['requests']} | {row['median_s']:.2f} | {row['p90_s']:.2f} | "
                         f"{row['throughput_per_s']:.3f} |")
    lines.append("")
    ratio = r.get("ratio_triton_over_onnxruntime", {})
    if ratio:
        lines += ["Triton end-to-end / in-process onnxruntime (1 client, median): "
                  + ", ".join(f"{k.removeprefix('triton_')} {v:.2f}x" for k, v in ratio.items()) + " (target <= 1.15x)", ""]
    mem = r.get("memory", {})
    app = r.get("app", {})
    lines += ["| memory (summed RSS of the process tree, sampled every 0.25 s) | MiB |", "|---|---|",
              f"| Triton + python stubs, idle | {mem.get('triton_idle_mib')} |",
              f"| Triton + python stubs, peak under 1-4 clients | {mem.get('triton_peak_mib')} |"]
    if "error" in app:
        lines.append(f"| MONAI Label app | failed: {app['error'][:200]} |")
    elif app:
        lines += [f"| MONAI Label app (backend triton), idle | {app['app_idle_mib']} |",
                  f"| MONAI Label app, peak during /infer | {app['app_peak_mib']} |",
                  f"| Triton, peak during the app's /infer | {app['triton_peak_mib']} |",
                  f"| **whole local stack (app + Triton), peak** | **{app['stack_peak_mib']}** (target < 6144) |"]
    lines.append("")
    if app and "infer_latency_s" in app:
        lines += [f"App `/infer/lumbar_spine` on Triton (incl. post-processing and report): "
                  f"{', '.join(map(str, app['infer_latency_s']))} s.", ""]
    for key in sorted(k for k in r if k.startswith("stack_memory")):
        sm = r[key]
        lines += [f"Memory per process tree (`benchmarks/stack_memory.py --key {key}`, onnxruntime arena "
                  f"{sm.get('ort_arena', 'on')} in the server, same study, load average {sm['load_average_start'][0]}; MiB; "
                  "summed RSS counts shared pages once per process, summed PSS splits them, so PSS adds up to real "
                  "occupancy):", "",
                  "| process tree | state | processes | RSS sum | PSS sum | USS sum |", "|---|---|---|---|---|---|"]
        rows = [("Triton + stubs", "idle (warm)", sm["triton_idle"]), ("Triton + stubs", "serving (gRPC)", sm["triton_serving"]),
                ("MONAI Label app", "idle (warm)", sm["app"]["app_idle"]), ("MONAI Label app", "serving /infer", sm["app"]["app_serving"]),
                ("Triton + stubs", "serving the app", sm["app"]["triton_serving"])]
        for name, state, m in rows:
            lines.append(f"| {name} | {state} | {len(m['processes'])} | {m['rss_mib']} | {m['pss_mib']} | {m['uss_mib']} |")
        lines += [f"| **whole local stack** | app serving | | {sm['stack_rss_mib']} | **{sm['stack_pss_mib']}** | "
                  f"{sm['stack_uss_mib']} |", "", "Largest processes (PSS, serving the app): " + ", ".join(
                      f"{x['process'].split('/')[-1]} {x['pss_mib']}" for x in sorted(
                          sm["app"]["triton_serving"]["processes"] + sm["app"]["app_serving"]["processes"],
                          key=lambda x: -x["pss_mib"])[:8]), ""]
    pm = r.get("pipeline_model", {})
    if pm:
        lines += ["| pipeline request only (gRPC) | clients | median s | p90 s | requests/s |", "|---|---|---|---|---|"]
        for model in ("spine_pipeline", "spine_ensemble"):
            for row in pm.get(model, []):
                lines.append(f"| {model} | {row['clients']} | {row['median_s']:.2f} | {row['p90_s']:.2f} | "
                             f"{row['throughput_per_s']:.3f} |")
        lines += ["", f"max |BLS - ensemble| = {pm.get('max_difference_bls_vs_ensemble'):.1e}", ""]
    big = r.get("study_36x256x256")
    if big:
        lines += [f"36x256x256, four modalities (phantom, {big['spacing_mm']} mm, model grid "
                  f"{'x'.join(map(str, big['model_grid']))}), in process (`analysis.analyse` with `Segmenter`: three "
                  f"planes + fusion + post-processing + report, {big['torch_threads']} torch threads): median "
                  f"**{big['analyse_median_s']:.2f} s** of {big['analyse_s']} (target <= 5 s); networks alone "
                  f"{big['networks_median_s']:.2f} s" + (f"; {big['gflop_per_study']} GFLOP, floor at matmul peak "
                                                          f"{big['floor_s_at_matmul_peak']} s" if "gflop_per_study" in big else "") + ".", ""]
    lb = r.get("lower_bound")
    if lb:
        lines += [f"Lower bound: {lb['gflop_per_study']} GFLOP per study (three planes + fusion, FlopCounterMode); "
                  f"matmul {lb['matmul_gflops_by_threads']} GFLOP/s by threads; torch achieves "
                  f"{lb['torch_achieved_gflops']} GFLOP/s = {lb['fraction_of_matmul_peak']:.0%} of the matmul rate "
                  f"(floor {lb['floor_s_at_matmul_peak']} s per study).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
