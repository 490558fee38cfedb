"""Authentication of the MONAI Label app for real (issue 16, item 5): ``monailabel start_server``
with MONAI Label's own authentication on (``MONAI_LABEL_AUTH_ENABLE``), as a deployment runs it.

MONAI Label checks bearer tokens against the public key of a Keycloak realm, which it fetches
from ``MONAI_LABEL_AUTH_REALM_URI`` (Keycloak answers ``GET /realms/<realm>`` with JSON holding
``public_key``). Keycloak, a Java server, is not run here: ``realm`` below is a STAND-IN for
Keycloak's realm endpoint only, a tiny loopback HTTP server that publishes the public half of
an RSA key the test holds; tokens are signed with its private half, with Keycloak's claim
layout (``preferred_username``, ``realm_access.roles``). Everything else (the server, its role
checks, the datastore) is the real thing.

Also: a server asked to listen on a non-loopback address with authentication off refuses to
start (and so never binds).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lumbarseg import io, phantom, viewer

from conftest import REPO, free_port, security_probe, untrained_weights
from servers import http_json, multipart

APP = REPO / "apps" / "lumbar_spine"
USER, ANNOTATOR, REVIEWER, ADMIN = ("monailabel-user", "monailabel-annotator", "monailabel-reviewer",
                                    "monailabel-admin")  # MONAI Label's default role names
ROLES = {"annotator": [USER, ANNOTATOR], "reviewer": [USER, ANNOTATOR, REVIEWER],
         "admin": [USER, ANNOTATOR, REVIEWER, ADMIN]}  # Keycloak composite roles, as docs/security.md says


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def realm():
    """STAND-IN for Keycloak's realm endpoint (``GET /realms/lumbarseg`` -> ``{"public_key": ...}``,
    base64 DER as Keycloak sends it), the probe's own; (realm URL, private key in PEM)."""
    return security_probe().start_realm()


def token(private_pem: bytes, role: str | None, *, algorithm: str = "RS256", expires_in: float | None = 600) -> str:
    """A Keycloak-shaped access token for ``role`` (``None`` for ``expires_in``: no expiry claim)."""
    now = int(time.time())
    payload = {"preferred_username": role or "nobody", "email": f"{role}@example.org", "iat": now,
               "realm_access": {"roles": ROLES.get(role, [])}}
    if expires_in is not None:
        payload["exp"] = now + int(expires_in)
    return jwt.encode(payload, private_pem, algorithm=algorithm)


class _Server(viewer.MonaiLabel):
    """Up once it answers at all: with authentication on, ``/info/`` answers 401."""

    def ready(self) -> bool:
        try:
            return viewer._request(f"{self.url}/info/", timeout=5)[0] in (200, 401, 403)
        except OSError:
            return False


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("auth_studies")
    (root / "studies").mkdir()
    (root / "truth").mkdir()
    ids = []
    for seed in (91, 92):
        study = phantom.generate(seed, modalities=("t2w",), spacing=(4.0, 4.0, 4.0))
        io.save_image(study.primary, root / "studies" / f"{study.subject}.nii.gz")
        io.save_label(study.primary.label, study.primary.affine, root / "truth" / f"{study.subject}.nii.gz")
        ids.append(study.subject)
    return root / "studies", root / "truth", ids


def _app_copy(root: Path, weights: Path) -> Path:
    app = root / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("model", "__pycache__"))
    shutil.copytree(weights, app / "model" / "lumbar_spine")
    return app


@pytest.fixture(scope="module")
def exposed_server(tmp_path_factory):
    """``monailabel start_server --host 0.0.0.0`` with authentication off, started before the
    authenticated server below so that the two start-ups overlap; the test reads its outcome."""
    root = tmp_path_factory.mktemp("exposed_app")
    app = _app_copy(root, untrained_weights(root / "weights", spacing=4.0))
    command = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(app),
               "--studies", str(root / "studies"), "--host", "0.0.0.0", "--port", str(free_port())]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MONAI_LABEL_TRACKING_ENABLED": "false", "MONAI_LABEL_AUTH_ENABLE": "false", "OMP_NUM_THREADS": "1"}
    env.pop("LUMBARSEG_ALLOW_UNAUTHENTICATED", None)
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    yield process, log
    viewer._terminate(process)


@pytest.fixture(scope="module")
def server(exposed_server, realm, studies, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth_app")
    app = _app_copy(root, untrained_weights(root / "weights", spacing=4.0))
    s = _Server(app, studies[0], port=free_port(), log=root / "server.log",
                env={"OMP_NUM_THREADS": "1", "MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm[0],
                     "MONAI_LABEL_AUTH_TIMEOUT": "5"})
    s.start(timeout=300)
    yield s
    s.stop()


def call(server, method: str, path: str, bearer: str | None = None, body: bytes | None = None,
         content_type: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    if content_type:
        headers["Content-Type"] = content_type
    return http_json(server.url + path, method, body, headers)


def put_label(server, bearer: str | None, image_id: str, label: Path, tag: str = "final") -> tuple[int, dict]:
    body, content_type = multipart({"params": "{}"}, {"label": (label.name, label.read_bytes())})
    return call(server, "PUT", f"/datastore/label?image={image_id}&tag={tag}", bearer, body, content_type)


def test_unauthenticated_clients_cannot_delete_read_logs_label_or_infer(server, studies):
    folder, truth, ids = studies
    image = folder / f"{ids[0]}.nii.gz"
    before = image.read_bytes()
    refused = {
        ("DELETE", f"/datastore/image?id={ids[0]}"), ("DELETE", f"/datastore/label?id={ids[0]}&tag=final"),
        ("GET", "/logs/"), ("GET", "/logs/?lines=1000&html=false&text=true"), ("GET", "/info/"),
        ("GET", "/datastore/?output=all"), ("POST", f"/infer/lumbar_spine?image={ids[0]}&output=json"),
        ("POST", "/train/sagittal"), ("DELETE", "/model/lumbar_spine"), ("POST", "/reload"),
    }
    for method, path in sorted(refused):
        status, body = call(server, method, path)
        assert status == 401, (method, path, status, body)
    assert put_label(server, None, ids[0], truth / f"{ids[0]}.nii.gz")[0] == 401
    assert image.read_bytes() == before and not (folder / "labels" / "final" / f"{ids[0]}.nii.gz").exists()
    status, body = call(server, "GET", "/health/")  # liveness probes carry no token
    assert status == 200 and body["status"] == "ok"


def test_forged_expired_and_unsigned_tokens_are_refused(server, realm, studies):
    _, private_pem = realm
    ids = studies[2]
    public_pem = serialization.load_pem_private_key(private_pem, None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    bad = {
        "signed by another key": token(_pem(_key()), "admin"),
        "expired": token(private_pem, "admin", expires_in=-60),
        "HS256 keyed with the realm's public key": jwt.encode(
            {"preferred_username": "x", "exp": int(time.time()) + 600, "realm_access": {"roles": ROLES["admin"]}},
            public_pem, algorithm="HS256") if _hmac_accepts_pem() else None,
        "alg none": jwt.encode({"preferred_username": "x", "exp": int(time.time()) + 600,
                                "realm_access": {"roles": ROLES["admin"]}}, None, algorithm="none"),
        "garbage": "not.a.token",
    }
    for reason, bearer in bad.items():
        if bearer is None:
            continue
        status, body = call(server, "DELETE", f"/datastore/label?id={ids[1]}&tag=final", bearer)
        assert status == 401, (reason, status, body)
    assert call(server, "GET", "/info/", token(private_pem, "admin", expires_in=None))[0] == 401  # never expires


def _hmac_accepts_pem() -> bool:
    """PyJWT itself refuses to use a PEM public key as an HMAC secret (then nobody can forge one)."""
    try:
        jwt.encode({"a": 1}, b"-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----", algorithm="HS256")
        return True
    except jwt.InvalidKeyError:
        return False


def test_an_annotator_labels_but_cannot_delete_read_logs_or_replace_the_model(server, realm, studies):
    _, private_pem = realm
    folder, truth, ids = studies
    annotator = token(private_pem, "annotator")
    status, info = call(server, "GET", "/info/", annotator)
    assert status == 200 and "lumbar_spine" in info["models"], info
    status, body = put_label(server, annotator, ids[0], truth / f"{ids[0]}.nii.gz")
    assert status == 200, body
    label = folder / "labels" / "final" / f"{ids[0]}.nii.gz"
    assert label.is_file()
    for method, path in (("DELETE", f"/datastore/image?id={ids[0]}"),
                         ("DELETE", f"/datastore/label?id={ids[0]}&tag=final"), ("GET", "/logs/"),
                         ("DELETE", "/model/lumbar_spine"), ("POST", "/reload"), ("POST", "/train/sagittal")):
        status, body = call(server, method, path, annotator)
        assert status == 403, (method, path, status, body)
        assert "is required" in body["detail"]
    assert label.is_file() and (folder / f"{ids[0]}.nii.gz").is_file()
    assert (server.app / "model" / "lumbar_spine" / "model.json").is_file()


def test_an_admin_reads_logs_and_deletes_a_label(server, realm, studies):
    _, private_pem = realm
    folder, truth, ids = studies
    admin = token(private_pem, "admin")
    assert put_label(server, admin, ids[1], truth / f"{ids[1]}.nii.gz")[0] == 200
    label = folder / "labels" / "final" / f"{ids[1]}.nii.gz"
    assert label.is_file()
    status, body = call(server, "GET", "/logs/?html=false&text=true", admin)
    assert status == 200, body
    status, body = call(server, "DELETE", f"/datastore/label?id={ids[1]}&tag=final", admin)
    assert status == 200, body
    assert not label.exists()


def test_a_server_on_a_network_address_without_authentication_refuses_to_start(exposed_server):
    process, log = exposed_server
    try:
        process.wait(timeout=240)
    except subprocess.TimeoutExpired:
        viewer._terminate(process)
        pytest.fail("the server started on 0.0.0.0 without authentication (still running after 240 s)")
    text = log.read_text(errors="replace")
    assert process.returncode != 0, text[-2000:]
    assert "refusing to serve on 0.0.0.0 without authentication" in text, text[-2000:]
    assert "Uvicorn running" not in text


@pytest.mark.parametrize("host, auth, allow, refused", [
    ("0.0.0.0", False, False, True), ("10.1.2.3", False, False, True), ("::", False, False, True),
    ("myhost.example.org", False, False, True), ("0.0.0.0", True, False, False), ("0.0.0.0", False, True, False),
    ("127.0.0.1", False, False, False), ("127.0.0.2", False, False, False), ("::1", False, False, False),
    ("localhost", False, False, False),
])
def test_exposure_rule(host, auth, allow, refused):
    spec = importlib.util.spec_from_file_location("lumbar_spine_serving", APP / "lib" / "serving.py")
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)
    if refused:
        with pytest.raises(serving.ExposureError, match="without authentication"):
            serving.check_exposure(host, auth_enabled=auth, allow_unauthenticated=allow)
    else:
        serving.check_exposure(host, auth_enabled=auth, allow_unauthenticated=allow)
    assert serving.listen_host(["monailabel", "start_server", "--app", "a"]) == "0.0.0.0"  # monailabel's default
    assert serving.listen_host(["monailabel", "start_server", "-i", "127.0.0.1"]) == "127.0.0.1"
    assert serving.listen_host(["uvicorn", "monailabel.app:app"]) == "127.0.0.1"  # uvicorn's default


def test_hostile_requests_of_the_security_probe_are_refused_with_authentication_on(server, realm, studies, tmp_path):
    """Kinds of benchmarks/security_probe.py against the deployment-mode server: the unauth_*
    kinds without a token are 401 and delete nothing; a body over its bound is 413 before the
    token is even looked at; an admin's training request naming a server file as its preset is
    422 before any task is submitted (MONAI Label answered SUBMITTED), the file not echoed."""
    from types import SimpleNamespace

    probe = security_probe()
    folder, _, ids = studies
    (tmp_path / "outside").mkdir()
    stack = SimpleNamespace(app_url=server.url, images=ids, outside=tmp_path / "outside", tmp=tmp_path, key="unused",
                            triton_http=None, triton_grpc=None)
    kinds = {k.name: k for k in probe.kinds(stack)}
    files = sorted(str(p) for p in folder.rglob("*.nii.gz"))
    for name in ("unauth_delete_label", "unauth_delete_image", "unauth_logs", "unauth_model_upload"):
        answer = kinds[name].send(stack)
        assert answer.status == 401, (name, answer)
    answer = kinds["huge_json_body"].send(stack)
    assert answer.status == 413 and "at most 1 MiB" in answer.reason, answer
    probe.BEARER.update(app_url=server.url, token=token(realm[1], "admin"))
    answer = kinds["train_preset_path"].send(stack)
    assert answer.status == 422 and "no such training preset" in answer.reason and "root:" not in answer.reason, answer
    assert sorted(str(p) for p in folder.rglob("*.nii.gz")) == files
    assert call(server, "GET", "/health/")[0] == 200
