"""Hostile requests against the real serving stack, recorded per kind.

Starts (or is pointed at) the MONAI Label app (``monailabel start_server --app
apps/lumbar_spine``, local datastore, Triton backend) and the Triton server (``lumbarseg triton
serve --cpu``), both on loopback, and sends each kind of hostile request a client on the
network could send: path ids and encodings, absolute paths, symlinks, oversized headers and
bodies, gzip bombs, absurd NIfTI headers, malformed tensors, model-control calls,
unauthenticated deletes. Per kind it records the HTTP status and reason, whether both servers
still answer afterwards, whether the data stayed intact (every file of the datastore, the model
repository and the probe's folder outside them hashed before and after: nothing changed,
nothing new, no file written outside), the temp files the app left behind and the servers'
peak memory during the request. A row passes when the request was refused with a 4xx (controls:
answered 2xx), both servers are alive and nothing changed.

    .venv/bin/python benchmarks/security_probe.py --out benchmarks/results/security_probe.json

Writes the JSON and a Markdown table beside it (``.md``) with the machine. ``--only`` selects
kinds by name prefix; ``--app-url`` / ``--triton-url`` probe running servers instead of
starting them (their datastore must then be given with ``--datastore``).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_bench as tb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BIN = Path(sys.executable).parent
ADMIN_HEADER = "lumbarseg-admin-key"  # lumbarseg.triton.server.ADMIN_HEADER (kept here: the probe runs on old trees)
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
KEY_ENV = "LUMBARSEG_TRITON_KEY"
# Files a server rewrites on its own (datastore index, locks, logs): not data.
VOLATILE = (".lock", "datastore_v2.json", ".log")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- HTTP without a client library's opinions ------------------------------------------------


@dataclass
class Answer:
    status: int | None
    reason: str
    body: bytes = b""


# With --auth: an annotator's bearer token, sent on every request to the app except the kinds
# that probe unauthenticated access (set per kind by probe()).
# train_* kinds carry an admin's token (training needs the admin role): they probe the training
# route's own checks, not the role check.
BEARER: dict[str, str | None] = {"app_url": None, "token": None, "admin": None}


def request(base: str, method: str, target: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 120) -> Answer:
    """One raw HTTP request; ``target`` is sent exactly as given (no normalisation, no quoting)."""
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    if BEARER["token"] and base == BEARER["app_url"]:
        headers = {"Authorization": f"Bearer {BEARER['token']}", **(headers or {})}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        try:
            conn.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking all we sent (a 413, uvicorn's 400): read it
        r = conn.getresponse()
        data = b""
        try:
            while chunk := r.read1(1 << 16):
                data += chunk
        except ConnectionResetError:
            # uvicorn answers a request head over h11's 16 KiB with 400 and closes with the rest
            # of the request unread, so the kernel resets the connection after the answer
            data += b" (then connection reset by the server)"
        return Answer(r.status, reason_of(data, r.reason), data)
    except socket.timeout:
        return Answer(None, f"no answer within {timeout:.0f} s")
    except (ConnectionError, http.client.HTTPException, OSError) as err:
        return Answer(None, f"connection failed: {type(err).__name__}: {err}")
    finally:
        conn.close()


# gRPC status -> the HTTP status the table reports (UNAVAILABLE, DEADLINE_EXCEEDED: no answer)
GRPC_STATUS = {"INVALID_ARGUMENT": 400, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": None,
               "DEADLINE_EXCEEDED": None}


def grpc_infer_raw(address: str, key: str | None, shape: list[int], data: bytes, dtype: str = "FP32",
                   timeout: float = 120) -> Answer:
    """One gRPC inference on spine_pipeline built without tritonclient's checks: IMAGE declared
    as ``shape`` with ``data`` as its bytes, CLASSES asked for."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    req = service_pb2.ModelInferRequest(model_name="spine_pipeline")
    req.inputs.add(name="IMAGE", datatype=dtype).shape.extend(shape)
    req.outputs.add(name="CLASSES")
    req.raw_input_contents.append(data)
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1),
                                                 ("grpc.max_receive_message_length", -1)]) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                req, metadata=[(GRPC_ADMIN_HEADER, key)] if key else None, timeout=timeout)
            return Answer(200, "accepted and computed")
        except grpc.RpcError as err:
            code = err.code().name
            return Answer(GRPC_STATUS.get(code, 500), f"gRPC {code}: {' '.join(str(err.details()).split())[:200]}")


def reason_of(body: bytes, fallback: str) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            data = data.get("detail") or data.get("error") or data
        text = data if isinstance(data, str) else json.dumps(data)
    except (ValueError, UnicodeDecodeError):
        text = body[:300].decode("utf-8", "replace") or fallback
    text = printable(" ".join(str(text).split()))
    return text[:240] + ("..." if len(text) > 240 else "")


def printable(text: str) -> str:
    """Control characters (a NUL echoed back in an id) as escapes, so the tables stay text."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = "probe" + secrets.token_hex(8)
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# -- files a hostile client sends --------------------------------------------------------------


def nifti_header(shape: tuple[int, ...], spacing: tuple[float, ...] = (1.0, 1.0, 1.0), datatype: int = 2,
                 bitpix: int = 8) -> bytes:
    """A NIfTI-1 single-file header (348 bytes + 4 extension bytes) declaring ``shape``."""
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    struct.pack_into("<8h", hdr, 40, *dims)
    struct.pack_into("<h", hdr, 70, datatype)
    struct.pack_into("<h", hdr, 72, bitpix)
    struct.pack_into("<8f", hdr, 76, 1.0, *spacing, *([1.0] * (7 - len(spacing))))
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<f", hdr, 112, 1.0)  # scl_slope
    struct.pack_into("<h", hdr, 254, 2)  # sform_code: scanner
    struct.pack_into("<4f", hdr, 280, spacing[0], 0, 0, 0)
    struct.pack_into("<4f", hdr, 296, 0, spacing[1], 0, 0)
    struct.pack_into("<4f", hdr, 312, 0, 0, spacing[2], 0)
    hdr[344:348] = b"n+1\0"
    return bytes(hdr)


def gzip_bomb(shape: tuple[int, int, int]) -> bytes:
    """A .nii.gz of zeros: ``prod(shape)`` bytes of uint8 once inflated, about 1/1000 of it sent."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as g:
        g.write(nifti_header(shape))
        chunk = bytes(2**24)
        left = int(np.prod(shape))
        while left > 0:
            g.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return out.getvalue()


def label_bomb(shape: tuple[int, int, int]) -> bytes:
    """A gzip bomb whose voxels hold many distinct values (labels are read and sorted)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as g:
        g.write(nifti_header(shape, datatype=16, bitpix=32))  # float32
        row = np.arange(2**20, dtype=np.float32).tobytes()
        left = int(np.prod(shape)) * 4
        while left > 0:
            g.write(row[: min(left, len(row))])
            left -= len(row)
    return out.getvalue()


def small_nifti(spacing: float = 1.0, shape=(8, 8, 8), nan: bool = False) -> bytes:
    data = np.zeros(shape, np.float32)
    if nan:
        data[0, 0, 0] = np.nan
    hdr = bytearray(nifti_header(shape, (spacing,) * 3, datatype=16, bitpix=32))
    return gzip.compress(bytes(hdr) + data.tobytes())


PWN_CONFIG = json.dumps({"name": "probe_pwn", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
                         "instance_group": [{"kind": "KIND_CPU", "count": 1}]})


def pwn_code(marker: Path) -> str:
    return (f"open({str(marker)!r}, 'w').write('code sent by a client ran in tritonserver')\n"
            "import triton_python_backend_utils as pb_utils\n"
            "class TritonPythonModel:\n"
            "    def execute(self, requests):\n"
            "        return [pb_utils.InferenceResponse([]) for r in requests]\n")


# -- authentication (--auth) ----------------------------------------------------------------------


def start_realm() -> tuple[str, bytes]:
    """STAND-IN for a Keycloak realm endpoint (``GET /realms/lumbarseg`` -> its public key), as
    tests/test_app_auth.py uses: MONAI Label verifies tokens signed with the private half, which
    this returns (PEM) with the realm URL. Keycloak itself (Java) is not run here."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = json.dumps({"realm": "lumbarseg", "public_key": base64.b64encode(der).decode(), "tokens-not-before": 0}).encode()

    class Realm(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path.rstrip("/") == "/realms/lumbarseg"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if ok else b"{}")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return f"http://127.0.0.1:{httpd.server_address[1]}/realms/lumbarseg", pem


def annotator_token(pem: bytes, admin: bool = False) -> str:
    import jwt

    now = int(time.time())
    roles = ["monailabel-user", "monailabel-annotator"] + (["monailabel-reviewer", "monailabel-admin"] if admin else [])
    return jwt.encode({"preferred_username": "probe-admin" if admin else "probe-annotator", "email": "probe@example.org",
                       "iat": now, "exp": now + 6 * 3600, "realm_access": {"roles": roles}}, pem, algorithm="RS256")


# -- the stack ---------------------------------------------------------------------------------


class Stack:
    """The probe's folder and the two servers (started here, or given by URL)."""

    def __init__(self, work: Path, args):
        self.work = work
        self.args = args
        self.datastore = Path(args.datastore) if args.datastore else work / "studies"
        self.outside = work / "outside"
        self.tmp = work / "tmp"  # the app's temp folder (TMPDIR)
        self.repository = work / "model_repository"
        self.key = os.environ.get(KEY_ENV) or secrets.token_urlsafe(24)
        self.triton_proc: subprocess.Popen | None = None
        self.app = None
        self.app_url = args.app_url
        self.triton_http = args.triton_url
        self.triton_grpc = args.triton_grpc
        self.images: list[str] = []

    # setup
    def prepare(self) -> None:
        from lumbarseg import io as lio, phantom

        for d in (self.outside, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        (self.outside / "canary.txt").write_text("a file beside the datastore that no request may touch\n")
        if not self.args.datastore:
            self.datastore.mkdir(parents=True, exist_ok=True)
            for seed in (61, 62, 63):
                study = phantom.generate(seed, modalities=("t2w",))
                lio.save_image(study.primary, self.datastore / f"{study.subject}.nii.gz")
            first = sorted(self.datastore.glob("*.nii.gz"))[0]
            labels = self.datastore / "labels" / "final"
            labels.mkdir(parents=True, exist_ok=True)
            study = lio.load_study(first)
            lio.save_label(np.zeros(study.primary.shape, np.uint8), study.primary.affine, labels / first.name)
        self.images = sorted(p.name.removesuffix(".nii.gz") for p in self.datastore.glob("*.nii.gz"))
        # a study the client never uploaded, in the app's temp folder, and a symlink there to outside
        shutil.copy(next(self.datastore.glob("*.nii.gz")), self.tmp / "other.nii.gz")
        shutil.copy(next(self.datastore.glob("*.nii.gz")), self.outside / "secret.nii.gz")
        link = self.tmp / "link.nii.gz"
        if not link.exists():
            link.symlink_to(self.outside / "secret.nii.gz")

    def start(self) -> None:
        if self.triton_http is None:
            self._repository()
            self.start_triton()
        if self.app_url is None:
            self.start_app()

    def _repository(self) -> None:
        if self.repository.exists():
            return
        if self.args.repository:
            shutil.copytree(self.args.repository, self.repository, ignore=shutil.ignore_patterns("__pycache__"))
            return
        shutil.copytree(REPO / "model_repository", self.repository, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
        subprocess.run([str(BIN / "lumbarseg"), "export", "--weights", self.args.weights, "--repository",
                        str(self.repository)], check=True, env=self.env(), stdout=subprocess.DEVNULL)

    def env(self) -> dict:
        return {**os.environ, "OMP_NUM_THREADS": "1", "LUMBARSEG_ORT_THREADS": "1", KEY_ENV: self.key,
                "MONAI_LABEL_TRACKING_ENABLED": "false"}

    def start_triton(self) -> None:
        self._http_port, self._grpc_port = free_port(), free_port()
        self.triton_http = f"http://127.0.0.1:{self._http_port}"
        self.triton_grpc = f"127.0.0.1:{self._grpc_port}"
        self._triton_start()

    def _triton_start(self) -> None:
        log = open(self.work / "triton.log", "ab")
        self.triton_proc = subprocess.Popen(
            [str(BIN / "lumbarseg"), "triton", "serve", "--cpu", "--repository", str(self.repository),
             "--http-port", str(self._http_port), "--grpc-port", str(self._grpc_port)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if request(self.triton_http, "GET", "/v2/health/ready", timeout=30).status == 200:
                return
            if self.triton_proc.poll() is not None:
                break
            time.sleep(1)
        raise RuntimeError(f"Triton did not start; see {self.work / 'triton.log'}")

    def start_app(self) -> None:
        from lumbarseg import viewer

        app = self.work / "app"
        if not app.exists():
            shutil.copytree(REPO / "apps" / "lumbar_spine", app, ignore=shutil.ignore_patterns("model", "logs", "__pycache__"))
            shutil.copytree(self.args.weights, app / "model" / "lumbar_spine")
        conf = {"backend": "triton", "triton_url": f"grpc://{self.triton_grpc}", "triton_repository": str(self.repository)}
        conf.update(dict(kv.split("=", 1) for kv in self.args.app_conf))
        env = {"TMPDIR": str(self.tmp), KEY_ENV: self.key, "OMP_NUM_THREADS": "1",
               **dict(kv.split("=", 1) for kv in self.args.app_env)}
        if self.args.auth:
            if not hasattr(self, "realm"):
                self.realm = start_realm()
            env.update(MONAI_LABEL_AUTH_ENABLE="true", MONAI_LABEL_AUTH_REALM_URI=self.realm[0], MONAI_LABEL_AUTH_TIMEOUT="5")
        self.app = viewer.MonaiLabel(app, self.datastore, port=free_port(), conf=conf, env=env, log=self.work / "app.log")
        if self.args.auth:
            self.app.ready = lambda: request(self.app.url, "GET", "/health/", timeout=5).status == 200 or \
                request(self.app.url, "GET", "/info/", timeout=5).status in (200, 401, 403)
        self.app.start(timeout=600)
        self.app_url = self.app.url
        if self.args.auth:
            BEARER.update(app_url=self.app_url, token=annotator_token(self.realm[1]),
                          admin=annotator_token(self.realm[1], admin=True))

    # liveness
    def app_alive(self) -> bool:
        return request(self.app_url, "GET", "/info/", timeout=60).status == 200

    def triton_alive(self) -> bool:
        """Ready, and the pipeline still computes a valid request (a crashed python stub leaves
        /v2/health/ready at 200 while every inference answers 500)."""
        if self.triton_proc is not None and self.triton_proc.poll() is not None:
            return False
        if request(self.triton_http, "GET", "/v2/health/ready", timeout=30).status != 200:
            return False
        return grpc_infer_raw(self.triton_grpc, self.key, [3, 4, 4, 4], bytes(4 * 3 * 64)).status == 200

    def revive(self) -> None:
        """Restart a server that died (or was killed after a request that never ended), so
        the next kind is probed against a live server."""
        if self.triton_proc is not None and not self.triton_alive():
            self.stop_triton()
            self._triton_start()
        if self.app is not None and not self.app_alive():
            self.app.stop()
            self.start_app()

    def stop_triton(self) -> None:
        """The launcher and everything it started (tritonserver runs in its own session, so a
        process-group kill of the launcher would leave it serving)."""
        import psutil

        if self.triton_proc is None or self.triton_proc.poll() is not None:
            return
        try:
            procs = [psutil.Process(self.triton_proc.pid), *psutil.Process(self.triton_proc.pid).children(recursive=True)]
        except psutil.Error:
            procs = []
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        self.triton_proc.wait()

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()
        self.stop_triton()

    def pids(self) -> dict[str, int]:
        pids = {}
        if self.triton_proc is not None:
            pids["triton"] = self.triton_proc.pid
        if self.app is not None and self.app.process is not None:
            pids["app"] = self.app.process.pid
        return pids

    # data
    def snapshot(self) -> dict[str, str]:
        """sha256 of every file under the probe folder (datastore, model repository, outside,
        the folder itself, the app's model folder), except the rest of the app copy, the temp
        folder and files servers rewrite."""
        roots = [self.work] + ([self.datastore] if self.args.datastore else [])
        out = {}
        for root in roots:
            for path in root.rglob("*"):
                rel = path.relative_to(root)
                if root == self.work and rel.parts and (rel.parts[0] == "tmp" or (
                        rel.parts[0] == "app" and rel.parts[1:2] != ("model",))):  # the app's code, logs, caches
                    continue
                if path.name.endswith(VOLATILE) or "__pycache__" in rel.parts or not (path.is_file() or path.is_symlink()):
                    continue
                try:
                    out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "link"
                except OSError:
                    out[str(path)] = "unreadable"
        return out

    def temp_files(self) -> set[str]:
        return {str(p) for p in self.tmp.rglob("*")} if self.tmp.exists() else set()


# -- memory sampling -----------------------------------------------------------------------------


# -- the kinds -------------------------------------------------------------------------------------


@dataclass
class Kind:
    name: str
    target: str  # "app" or "triton"
    what: str
    send: Callable[["Stack"], Answer]
    control: bool = False  # a legitimate request: must succeed
    issue_item: str = ""
    extra: Callable[["Stack"], str | None] | None = None  # another check: a failure message or None


@dataclass
class Row:
    name: str
    target: str
    what: str
    issue_item: str
    status: int | None
    reason: str
    app_alive: bool
    triton_alive: bool
    intact: bool
    changed: list[str] = field(default_factory=list)
    temp_left: int = 0
    peak_rss_mib: dict = field(default_factory=dict)
    seconds: float = 0.0
    passed: bool = False
    control: bool = False


def kinds(stack: Stack) -> list[Kind]:
    image = stack.images[0]
    shell = ("p.sh", b"#!/bin/sh\necho pwned\n")
    app, tri = "app", "triton"

    def put_image(image_id: str, file) -> Callable[[Stack], Answer]:
        def send(s: Stack) -> Answer:  # ``file``: (name, bytes), or a function making it (big payloads: when sent)
            body, headers = multipart({"params": "{}"}, {"file": file() if callable(file) else file})
            return request(s.app_url, "PUT", f"/datastore/image?image={image_id}", body, headers, timeout=300)
        return send

    def put_label(image_id: str, tag: str, file) -> Callable[[Stack], Answer]:
        def send(s: Stack) -> Answer:
            body, headers = multipart({"params": "{}"}, {"label": file() if callable(file) else file})
            return request(s.app_url, "PUT", f"/datastore/label?image={image_id}&tag={tag}", body, headers, timeout=300)
        return send

    def infer(query: str, params: dict | None = None, raw: bytes | None = None, model: str = "lumbar_spine"):
        def send(s: Stack) -> Answer:
            body, headers = multipart({"params": json.dumps(params or {})} if raw is None else {"params": raw.decode()}, {})
            return request(s.app_url, "POST", f"/infer/{model}?{query}", body, headers, timeout=600)
        return send

    def get(target: str, headers: dict | None = None, base: str = "app"):
        return lambda s: request(s.app_url if base == "app" else s.triton_http, "GET", target, headers=headers)

    def triton_post(target: str, payload, headers: dict | None = None, timeout: float = 120):
        def send(s: Stack) -> Answer:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            return request(s.triton_http, "POST", target, body, {"Content-Type": "application/json", **(headers or {})},
                           timeout=timeout)
        return send

    def binary_infer(shape: list[int], data: bytes, dtype: str = "FP32", timeout: float = 120, key: bool = True):
        def send(s: Stack) -> Answer:
            auth = {ADMIN_HEADER: s.key} if key else {}
            header = json.dumps({"inputs": [{"name": "IMAGE", "shape": shape, "datatype": dtype,
                                             "parameters": {"binary_data_size": len(data)}}],
                                 "outputs": [{"name": "CLASSES", "parameters": {"binary_data": True}}]}).encode()
            return request(s.triton_http, "POST", "/v2/models/spine_pipeline/infer", header + data,
                           {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header)), **auth},
                           timeout=timeout)
        return send

    def grpc_infer(shape: list[int], data: bytes | None = None, dtype: str = "FP32", timeout: float = 180):
        """gRPC inference with the admin key (the only way in); zeros filling ``shape`` by default."""
        if data is None:
            data = bytes(4 * int(np.prod(shape)))
        return lambda s: grpc_infer_raw(s.triton_grpc, s.key, shape, data, dtype, timeout)

    def grpc_admin(call: str):
        def send(s: Stack) -> Answer:
            import tritonclient.grpc as grpc
            from tritonclient.utils import InferenceServerException

            client = grpc.InferenceServerClient(s.triton_grpc)
            try:
                if call == "load":
                    marker = s.outside / "PWNED_grpc"
                    client.load_model("probe_pwn_grpc", config=PWN_CONFIG.replace("probe_pwn", "probe_pwn_grpc"),
                                      files={"file:1/model.py": pwn_code(marker).encode()})
                elif call == "unload":
                    client.unload_model("fusion")
                else:
                    client.get_model_repository_index()
                return Answer(200, f"{call} accepted")
            except InferenceServerException as err:
                code = 403 if "restricted" in str(err.message()).lower() or "PERMISSION" in str(err.status()) else 400
                return Answer(code, f"gRPC {err.status()}: {' '.join(str(err.message()).split())[:200]}")
            finally:
                client.close()
        return send

    def not_echoing(send, secret: bytes):
        """A kind that fails (no status) when the answer carries ``secret``, a file's content."""
        def checked(s: Stack) -> Answer:
            a = send(s)
            return Answer(None, f"the answer echoes the file: {a.reason}", a.body) if secret in a.body else a
        return checked

    def marker_absent(name: str):
        return lambda s: f"{name} written: code sent by the client ran" if (s.outside / name).exists() else None

    def triton_still_serves(s: Stack) -> str | None:
        a = grpc_infer([3, 8, 8, 8])(s)
        if a.status == 200:
            return None
        if "not healthy" not in a.reason:
            return f"a valid request afterwards answered {a.status}: {a.reason}"
        # the python stub died: what the project's client does on meeting it (reload, retry)
        from lumbarseg.triton.client import TritonSegmenter

        with TritonSegmenter(f"grpc://{s.triton_grpc}", key=s.key, retries=0) as client:
            client.infer(np.zeros((3, 8, 8, 8), np.float32), ["CLASSES"])
        return f"the pipeline's stub died ({a.reason}); the project's client reloaded the model and was served"

    def models_ready(s: Stack) -> str | None:
        a = request(s.triton_http, "GET", "/v2/models/fusion/ready")
        return None if a.status == 200 else "fusion was unloaded by an unauthenticated client"

    pwn_http = {"parameters": {"config": PWN_CONFIG,
                               "file:1/model.py": base64.b64encode(pwn_code(stack.outside / "PWNED_http").encode()).decode()}}
    temp = stack.tmp
    big_header = {"X-Probe": "a" * (1 << 20)}
    many_headers = {f"X-Probe-{i}": "b" * 64 for i in range(2000)}
    nested_json = b"[" * 100_000 + b"]" * 100_000
    garbage = ("garbage.nii.gz", os.urandom(4096))

    return [
        # ---- controls: the legitimate paths must keep working
        Kind("control_app_info", app, "GET /info/", get("/info/"), control=True),
        Kind("control_triton_infer", tri, "valid gRPC infer 3x8x8x8 with the admin key (the app's client)",
             grpc_infer([3, 8, 8, 8]), control=True),
        Kind("control_triton_load_with_key", tri, "POST /v2/repository/models/fusion/load with the admin key (the app's reload)",
             triton_post("/v2/repository/models/fusion/load", {}, {ADMIN_HEADER: stack.key}), control=True),
        # ---- app: ids and tags that are paths (item 1)
        Kind("image_id_dotdot", app, "PUT /datastore/image?image=../escape_img (shell script)", put_image("../escape_img", shell), issue_item="1"),
        Kind("image_id_encoded", app, "PUT /datastore/image?image=..%2fescape_enc", put_image("..%2fescape_enc", shell), issue_item="1"),
        Kind("image_id_double_encoded", app, "PUT /datastore/image?image=..%252fescape_dbl", put_image("..%252fescape_dbl", shell), issue_item="1"),
        Kind("image_id_absolute", app, f"PUT /datastore/image?image={stack.outside}/abs_escape",
             put_image(q(str(stack.outside / "abs_escape")), shell), issue_item="1"),
        Kind("image_id_backslash", app, "PUT /datastore/image?image=..\\..\\escape_bs", put_image(q("..\\..\\escape_bs"), shell), issue_item="1"),
        Kind("image_id_nul", app, "PUT /datastore/image?image=ok%00.sh", put_image("ok%00.sh", shell), issue_item="1"),
        Kind("label_tag_dotdot", app, f"PUT /datastore/label?image={image}&tag=../../escape_tag",
             put_label(image, q("../../escape_tag"), ("l.nii.gz", small_nifti())), issue_item="1"),
        Kind("label_image_dotdot", app, "PUT /datastore/label?image=../../outside/x&tag=final",
             put_label(q("../../outside/x"), "final", ("l.nii.gz", small_nifti())), issue_item="1"),
        Kind("download_image_dotdot", app, "GET /datastore/image?image=../outside/canary.txt",
             get("/datastore/image?image=" + q("../outside/canary.txt")), issue_item="1"),
        Kind("download_label_dotdot", app, "GET /datastore/label?label=../../../outside/canary.txt&tag=final",
             get("/datastore/label?label=" + q("../../../outside/canary.txt") + "&tag=final"), issue_item="1"),
        Kind("path_encoded_route", app, "GET /datastore/..%2f..%2f..%2fetc%2fpasswd", get("/datastore/..%2f..%2f..%2fetc%2fpasswd"), issue_item="1"),
        Kind("logs_file_dotdot", app, "GET /logs/?logfile=../../../../etc/passwd",
             get("/logs/?logfile=" + q("../../../../etc/passwd")), issue_item="5"),
        # ---- app: reads outside the datastore (item 4)
        Kind("infer_absolute_path", app, "POST /infer/lumbar_spine?image=/etc/passwd", infer("image=%2Fetc%2Fpasswd&output=json"), issue_item="4"),
        Kind("infer_temp_file", app, "POST /infer/lumbar_spine?image=<temp>/other.nii.gz (never uploaded)",
             infer(f"image={q(str(temp / 'other.nii.gz'))}&output=json"), issue_item="4"),
        Kind("infer_temp_symlink", app, "POST /infer/lumbar_spine?image=<temp>/link.nii.gz (symlink to outside)",
             infer(f"image={q(str(temp / 'link.nii.gz'))}&output=json"), issue_item="4"),
        Kind("train_preset_path", app, "POST /train/sagittal with {\"preset\": \"/etc/passwd\"} (admin token with --auth)",
             not_echoing(lambda s: request(s.app_url, "POST", "/train/sagittal", json.dumps({"preset": "/etc/passwd"}).encode(),
                                           {"Content-Type": "application/json"}), b"root:"),
             issue_item="10"),
        Kind("infer_unknown_model", app, "POST /infer/no_such_model", infer(f"image={image}", model="no_such_model"), issue_item="10"),
        Kind("unknown_strategy", app, "POST /activelearning/no_such_strategy",
             lambda s: request(s.app_url, "POST", "/activelearning/no_such_strategy", b"{}", {"Content-Type": "application/json"}),
             issue_item="10"),
        # ---- app: hostile files (items 9, 10)
        Kind("upload_garbage_image", app, "PUT /datastore/image?image=garbage (random bytes as .nii.gz)",
             put_image("garbage_probe", garbage), issue_item="10"),
        Kind("upload_absurd_header", app, "PUT /datastore/image: NIfTI header declaring 30000^3 voxels, no data",
             put_image("absurd_header", ("absurd.nii.gz", gzip.compress(nifti_header((30000, 30000, 30000))))), issue_item="9"),
        Kind("upload_absurd_spacing", app, "PUT /datastore/image: 8^3 study at 10 m spacing",
             put_image("absurd_spacing", ("spacing.nii.gz", small_nifti(spacing=10000.0))), issue_item="9"),
        Kind("upload_nan_image", app, "PUT /datastore/image: study with a NaN voxel",
             put_image("nan_image", ("nan.nii.gz", small_nifti(nan=True))), issue_item="9"),
        Kind("upload_gzip_bomb_image", app, "PUT /datastore/image: 1 GiB of zeros in a ~1 MB .nii.gz",
             put_image("bomb_image", lambda: ("bomb.nii.gz", gzip_bomb((1024, 1024, 1024)))), issue_item="9"),
        Kind("upload_gzip_bomb_label", app, f"PUT /datastore/label?image={image}: 256 MiB float32 of distinct values, gzipped",
             put_label(image, "final", lambda: ("bomb.nii.gz", label_bomb((512, 512, 256)))), issue_item="9"),
        Kind("infer_upload_absurd_spacing", app, "POST /infer/lumbar_spine with an uploaded 10 m-spacing study",
             lambda s: request(s.app_url, "POST", "/infer/lumbar_spine?output=json",
                               *multipart({"params": "{}"}, {"file": ("spacing.nii.gz", small_nifti(spacing=10000.0))}),
                               timeout=300), issue_item="9"),
        # ---- app: oversized requests (item 9)
        Kind("oversized_header", app, "GET /info/ with one 1 MiB header", get("/info/", big_header), issue_item="9"),
        Kind("many_headers", app, "GET /info/ with 2000 headers", get("/info/", many_headers), issue_item="9"),
        Kind("oversized_url", app, "GET /datastore/image?image=<200 KB id>", get("/datastore/image?image=" + "a" * 200_000), issue_item="9"),
        Kind("huge_json_body", app, "POST /activelearning/random with a 64 MiB JSON body",
             lambda s: request(s.app_url, "POST", "/activelearning/random", b'{"a": "' + b"x" * (64 << 20) + b'"}',
                               {"Content-Type": "application/json"},
                               timeout=300), issue_item="9"),
        Kind("deeply_nested_json", app, "POST /activelearning/random with JSON nested 100000 deep",
             lambda s: request(s.app_url, "POST", "/activelearning/random", nested_json, {"Content-Type": "application/json"}),
             issue_item="9"),
        # ---- triton: model control and other restricted APIs (item 2)
        Kind("triton_load_file_override", tri, "POST /v2/repository/models/probe_pwn/load with file:1/model.py (no key)",
             triton_post("/v2/repository/models/probe_pwn/load", pwn_http), issue_item="2", extra=marker_absent("PWNED_http")),
        Kind("triton_load_wrong_key", tri, "the same load with a wrong admin key",
             triton_post("/v2/repository/models/probe_pwn/load", pwn_http, {ADMIN_HEADER: "wrong"}), issue_item="2",
             extra=marker_absent("PWNED_http")),
        Kind("triton_grpc_load_override", tri, "gRPC RepositoryModelLoad with file:1/model.py (no key)", grpc_admin("load"),
             issue_item="2", extra=marker_absent("PWNED_grpc")),
        Kind("triton_unload", tri, "POST /v2/repository/models/fusion/unload (no key)",
             triton_post("/v2/repository/models/fusion/unload", {}), issue_item="2", extra=models_ready),
        Kind("triton_grpc_unload", tri, "gRPC RepositoryModelUnload fusion (no key)", grpc_admin("unload"), issue_item="2",
             extra=models_ready),
        Kind("triton_repository_index", tri, "POST /v2/repository/index (no key)", triton_post("/v2/repository/index", {}),
             issue_item="2"),
        Kind("triton_trace_file", tri, "POST /v2/trace/setting trace_file=<outside>/trace (no key)",
             triton_post("/v2/trace/setting", {"trace_file": str(stack.outside / "trace.json"), "trace_level": ["TIMESTAMPS"]}),
             issue_item="2"),
        Kind("triton_logging", tri, "POST /v2/logging log_verbose_level=9 (no key)",
             triton_post("/v2/logging", {"log_verbose_level": 9}), issue_item="2"),
        Kind("triton_shm_register", tri, "POST /v2/systemsharedmemory/region/x/register key=/dev/shm region (no key)",
             triton_post("/v2/systemsharedmemory/region/probe/register", {"key": "/probe_shm", "offset": 0, "byte_size": 64}),
             issue_item="2"),
        # ---- triton: malformed tensors (item 3)
        Kind("triton_json_absurd_shape", tri, "JSON infer declaring IMAGE [3,20000,20000,20000] with 12 values",
             triton_post("/v2/models/spine_pipeline/infer",
                         {"inputs": [{"name": "IMAGE", "shape": [3, 20000, 20000, 20000], "datatype": "FP32",
                                      "data": [0.0] * 12}]}),
             issue_item="3", extra=triton_still_serves),
        Kind("triton_infer_without_key", tri, "valid binary infer 3x8x8x8 without the admin key",
             binary_infer([3, 8, 8, 8], np.zeros((3, 8, 8, 8), np.float32).tobytes(), key=False), issue_item="2/3"),
        Kind("triton_http_infer_with_key", tri, "valid binary HTTP infer 3x8x8x8 WITH the admin key (HTTP inference is closed)",
             binary_infer([3, 8, 8, 8], np.zeros((3, 8, 8, 8), np.float32).tobytes()), issue_item="3"),
        Kind("triton_json_negative_shape", tri, "JSON infer declaring IMAGE [3,-5,4,4]",
             triton_post("/v2/models/spine_pipeline/infer",
                         {"inputs": [{"name": "IMAGE", "shape": [3, -5, 4, 4], "datatype": "FP32", "data": [0.0] * 12}]}),
             issue_item="3"),
        Kind("triton_json_overflow_shape", tri, "JSON infer declaring IMAGE [3,2^62,2^62,4] (element count overflows)",
             triton_post("/v2/models/spine_pipeline/infer",
                         {"inputs": [{"name": "IMAGE", "shape": [3, 2**62, 2**62, 4], "datatype": "FP32", "data": [0.0] * 12}]}),
             issue_item="3", extra=triton_still_serves),
        Kind("triton_json_overflow_shape_with_key", tri, "the overflowing-shape JSON infer sent WITH the admin key",
             triton_post("/v2/models/spine_pipeline/infer",
                         {"inputs": [{"name": "IMAGE", "shape": [3, 2**62, 2**62, 4], "datatype": "FP32", "data": [0.0] * 12}]},
                         {ADMIN_HEADER: stack.key}),
             issue_item="3", extra=triton_still_serves),
        Kind("triton_binary_size_mismatch", tri, "gRPC infer declaring [3,512,512,512] with 48 bytes (key)",
             grpc_infer([3, 512, 512, 512], bytes(48)), issue_item="3", extra=triton_still_serves),
        Kind("triton_grpc_overflow_shape_with_key", tri,
             "gRPC infer declaring [3,2^62,2^62,4] with no bytes (key; the element count wraps to 0)",
             grpc_infer([3, 2**62, 2**62, 4], b""), issue_item="3", extra=triton_still_serves),
        Kind("triton_wrong_dtype", tri, "gRPC infer IMAGE as INT32 (key)", grpc_infer([3, 8, 8, 8], bytes(4 * 3 * 512), "INT32"),
             issue_item="3"),
        Kind("triton_wrong_rank", tri, "gRPC infer IMAGE of rank 3 (key)", grpc_infer([3, 8, 8], bytes(4 * 3 * 64)), issue_item="3"),
        Kind("triton_nan", tri, "gRPC infer with NaN voxels (key)",
             grpc_infer([3, 8, 8, 8], np.full((3, 8, 8, 8), np.nan, np.float32).tobytes()), issue_item="3"),
        Kind("triton_huge_json_body", tri, "JSON infer body of 80 MiB",
             triton_post("/v2/models/spine_pipeline/infer", b'{"inputs": [{"name": "IMAGE", "data": "' + b"x" * (80 << 20) + b'"}]}'),
             issue_item="3"),
        Kind("triton_flat_slab", tri, "gRPC infer IMAGE 3x2x1024x2048 with the key (4.2 M voxels, slices of 1024x2048)",
             grpc_infer([3, 2, 1024, 2048]), issue_item="3", extra=triton_still_serves),
        Kind("triton_oversized_volume", tri, "gRPC infer IMAGE 3x160x256x256 with the key (the issue's 11 GB request)",
             grpc_infer([3, 160, 256, 256], timeout=240), issue_item="3", extra=triton_still_serves),
        Kind("triton_json_absurd_shape_with_key", tri, "the absurd-shape JSON infer sent WITH the admin key",
             triton_post("/v2/models/spine_pipeline/infer",
                         {"inputs": [{"name": "IMAGE", "shape": [3, 20000, 20000, 20000], "datatype": "FP32",
                                      "data": [0.0] * 12}]}, {ADMIN_HEADER: stack.key}),
             issue_item="3", extra=triton_still_serves),
        # ---- app: unauthenticated destructive calls (item 5), last: on an open server they delete data
        Kind("unauth_delete_label", app, f"DELETE /datastore/label?id={image}&tag=final (no credentials)",
             lambda s: request(s.app_url, "DELETE", f"/datastore/label?id={image}&tag=final"), issue_item="5"),
        Kind("unauth_delete_image", app, f"DELETE /datastore/?id={stack.images[-1]} (no credentials)",
             lambda s: request(s.app_url, "DELETE", f"/datastore/?id={stack.images[-1]}"), issue_item="5"),
        Kind("unauth_logs", app, "GET /logs/ (no credentials)", get("/logs/"), issue_item="5"),
        Kind("unauth_model_upload", app, "PUT /model/lumbar_spine with a file (no credentials)",
             lambda s: request(s.app_url, "PUT", "/model/lumbar_spine",
                               *multipart({}, {"file": ("evil.pt", b"not a model")})), issue_item="5"),
    ]


def probe(stack: Stack, kind: Kind) -> Row:
    before, temp_before = stack.snapshot(), stack.temp_files()
    start = time.monotonic()
    token = BEARER["token"]
    if kind.name.startswith("unauth_"):
        BEARER["token"] = None  # these kinds probe what a client without credentials can do
    elif kind.name.startswith("train_") and BEARER["admin"]:
        BEARER["token"] = BEARER["admin"]
    try:
        with tb.RssSampler(stack.pids(), 0.2) as peak:
            answer = kind.send(stack)
            problem = kind.extra(stack) if kind.extra else None
    finally:
        BEARER["token"] = token
    seconds = time.monotonic() - start
    app_alive, triton_alive = stack.app_alive(), stack.triton_alive()
    after = stack.snapshot()
    changed = sorted(set(before) ^ set(after) | {k for k in before.keys() & after.keys() if before[k] != after[k]})
    changed = [str(Path(c).relative_to(stack.work)) if c.startswith(str(stack.work)) else c for c in changed]
    reason = answer.reason
    if problem:
        reason = f"{reason} | {problem}"
    temp_left = len(stack.temp_files() - temp_before)
    ok_status = answer.status is not None and (200 <= answer.status < 300 if kind.control else 400 <= answer.status < 500)
    row = Row(kind.name, kind.target, kind.what, kind.issue_item, answer.status, reason, app_alive, triton_alive,
              intact=not changed and not problem, changed=changed[:10], temp_left=temp_left,
              peak_rss_mib={k: round(v / 2**20) for k, v in peak.peak.items()}, seconds=round(seconds, 2),
              control=kind.control)
    row.passed = ok_status and app_alive and triton_alive and row.intact and temp_left == 0
    return row


def markdown(result: dict) -> str:
    rows = result["rows"]
    passed = sum(r["passed"] for r in rows)
    lines = [f"# Security probe: {result['label']}", "",
             tb.machine_line(result["machine"], result["note"]), "",
             f"Commit {result['commit']}; {len(rows)} kinds, **{passed} pass**, {len(rows) - passed} fail; "
             f"{sum(1 for r in rows if r['status'] is not None and r['status'] >= 500)} answered 5xx; "
             f"{sum(1 for r in rows if not r['intact'])} changed data; "
             f"{sum(1 for r in rows if not (r['app_alive'] and r['triton_alive']))} left a server down. "
             "Pass: refused with 4xx (controls: 2xx), both servers answer afterwards, no file changed or "
             "appeared outside the app's temp folder, no temp file left behind.", "",
             "| kind | item | request | status | reason | alive app/triton | intact | temp left | peak RSS MiB app/triton | s | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reason = printable(r["reason"]).replace("|", "/")
        if r["changed"]:
            reason += f" — changed: {', '.join(r['changed'][:3])}"
        rss = r["peak_rss_mib"]
        lines.append(f"| {r['name']}{' (control)' if r['control'] else ''} | {r['issue_item']} | `{r['what'].replace('|', '/')}` | "
                     f"{r['status'] if r['status'] is not None else '—'} | {reason[:300]} | "
                     f"{'yes' if r['app_alive'] else '**no**'}/{'yes' if r['triton_alive'] else '**no**'} | "
                     f"{'yes' if r['intact'] else '**no**'} | {r['temp_left']} | {rss.get('app', '—')}/{rss.get('triton', '—')} | "
                     f"{r['seconds']} | {'yes' if r['passed'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _cell(row: dict | None) -> str:
    """One run's outcome of a kind, for the before/after table: status, what broke, pass mark."""
    if row is None:
        return "not sent"
    broken = [what for what, bad in (("server down", not (row["app_alive"] and row["triton_alive"])),
                                     ("data changed", bool(row["changed"])),
                                     ("pipeline broken", not row["intact"] and not row["changed"]),
                                     (f"{row['temp_left']} temp left", row["temp_left"])) if bad]
    status = "no answer" if row["status"] is None else str(row["status"])
    detail = f" ({', '.join(broken)})" if broken else ""
    return f"{status}{detail} {'✔' if row['passed'] else '✘'}"


def compare_table(before: dict, after: dict) -> str:
    """Markdown table of every kind of ``after`` with its outcome in ``before`` (docs/security.md)."""
    old = {r["name"]: r for r in before["rows"]}
    lines = ["| kind | item | request | before | after | after: reason |", "|---|---|---|---|---|---|"]
    for r in after["rows"]:
        reason = printable(r["reason"]).replace("|", "/")[:140]
        lines.append(f"| {r['name']} | {r['issue_item']} | `{r['what'].replace('|', '/')}` | {_cell(old.get(r['name']))} | "
                     f"{_cell(r)} | {reason} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="print the before/after table of two result JSONs (docs/security.md) and exit")
    parser.add_argument("--weights", default=str(REPO / "weights" / "lite"), help="weights the app and Triton serve")
    parser.add_argument("--repository", help="an exported model repository of --weights to copy (default: export)")
    parser.add_argument("--work", help="probe folder (default: a new one under /tmp)")
    parser.add_argument("--app-url", help="probe this running app instead of starting one (needs --datastore)")
    parser.add_argument("--datastore", help="the running app's datastore folder (checked for changes)")
    parser.add_argument("--triton-url", help="probe this running Triton (HTTP URL) instead of starting one")
    parser.add_argument("--triton-grpc", help="its gRPC host:port")
    parser.add_argument("--app-conf", action="append", default=[], help="KEY=VALUE for the started app's --conf")
    parser.add_argument("--app-env", action="append", default=[], help="KEY=VALUE in the started app's environment")
    parser.add_argument("--auth", action="store_true",
                        help="start the app as a deployment runs it: MONAI Label authentication on (a stand-in Keycloak "
                             "realm on loopback); every kind is then sent with an annotator's token except unauth_*")
    parser.add_argument("--only", default="", help="comma-separated kind-name prefixes to run")
    parser.add_argument("--skip", default="", help="comma-separated kind names not to send (recorded as not sent)")
    parser.add_argument("--skip-reason", default="skipped", help="why --skip kinds were not sent")
    parser.add_argument("--label", default="current tree", help="what was probed (e.g. 'before: main at abc123')")
    parser.add_argument("--note", default="", help="context recorded with the results")
    parser.add_argument("--out", default=str(RESULTS / "security_probe.json"), help="results JSON (and .md beside it)")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare_table(*(json.loads(Path(f).read_text()) for f in args.compare)), end="")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="security_probe_"))
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(work, args)
    stack.prepare()
    machine = tb.machine(1)
    rows = []
    try:
        stack.start()
        selected = [k for k in kinds(stack) if not args.only or k.name.startswith(tuple(args.only.split(",")))]
        skip = set(filter(None, args.skip.split(",")))
        for kind in selected:
            if kind.name in skip:
                rows.append(asdict(Row(kind.name, kind.target, kind.what, kind.issue_item, None,
                                       f"not sent: {args.skip_reason}", True, True, True, control=kind.control)))
                continue
            row = probe(stack, kind)
            rows.append(asdict(row))
            print(f"{'PASS' if row.passed else 'FAIL'} {row.name}: {row.status} {row.reason[:150]} "
                  f"(alive {row.app_alive}/{row.triton_alive}, intact {row.intact}, temp {row.temp_left}, {row.seconds} s)",
                  flush=True)
            stack.revive()
    finally:
        stack.stop()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"label": args.label, "note": args.note, "commit": commit, "machine": machine, "work": str(work), "rows": rows}
    tb.write_results(result, Path(args.out), markdown)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
