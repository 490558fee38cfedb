"""What the app changes in MONAI Label's server for a hospital network: who may call it, and a
server that answers while it infers.

Installed once per server process, from :meth:`LumbarSpineApp.server_mode` (MONAI Label calls it
in the server only, never in a train or scoring subprocess):

* :func:`check_exposure`: refuses to serve on a non-loopback address with authentication off,
  unless the operator says so (``--conf allow_unauthenticated true`` or
  ``LUMBARSEG_ALLOW_UNAUTHENTICATED=true``). The server then never starts (uvicorn runs the
  app's start-up before it binds its socket).
* :func:`install_token_check`: MONAI Label 0.8.5 decodes tokens with ``jwt.decode`` and no
  ``algorithms``, which PyJWT 2 refuses for every token: with authentication on, nobody could
  use the server. Replaced by a check that names the algorithms (``LUMBARSEG_AUTH_ALGORITHMS``,
  default ``RS256``, Keycloak's), requires an expiry, and answers 503 (not 500) when the realm's
  key cannot be fetched.
* :func:`install_routes`: ``POST /infer/{model}`` runs on a worker pool off the event loop behind
  a bounded queue (503 with a reason and ``Retry-After`` beyond it); ``GET /health/`` answers
  without a token (liveness probes) with the queue's state; ``POST /reload`` (MONAI Label leaves
  it open) and ``PUT``/``DELETE /model/{model}`` (annotator role in 0.8.5: an annotator could
  replace or move away the served model) need the admin role.

See docs/security.md for the settings and the roles.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi import Depends, HTTPException

log = logging.getLogger(__name__)

TRUE = ("1", "true", "yes", "on")
DEFAULT_INFER_WORKERS = 2
DEFAULT_INFER_QUEUE = 32  # requests running or waiting; more get 503
RETRY_AFTER_S = 10
MAX_PLAIN_BODY = 2**20  # bytes of a body that carries no file (JSON, url-encoded form)
# Bodies that carry files: uploads (MONAI Label's forms), DICOMweb STOW-RS through /proxy/dicom
# (OHIF stores a DICOM-SEG as multipart/related), raw DICOM or bytes.
FILE_TYPES = (b"multipart/form-data", b"multipart/related", b"application/dicom", b"application/octet-stream")
MAX_TARGET = 8 * 2**10  # bytes of path plus query string
MAX_HEADERS = 100  # header fields of one request


class ExposureError(RuntimeError):
    """The server would answer unauthenticated clients on a network address."""


# --- who may call the server ---------------------------------------------------------------------

def listen_host(argv: list[str] | None = None) -> str:
    """The address the server binds, from its command line: ``monailabel start_server`` binds
    ``--host``/``-i`` (default 0.0.0.0, every interface); ``uvicorn`` run directly binds
    ``--host`` (default 127.0.0.1)."""
    argv = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg in ("--host", "-i") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return "127.0.0.1" if argv and os.path.basename(argv[0]).startswith("uvicorn") else "0.0.0.0"


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(host: str, *, auth_enabled: bool, allow_unauthenticated: bool) -> None:
    """Raise :class:`ExposureError` for a non-loopback ``host`` with authentication off, unless
    ``allow_unauthenticated``."""
    if auth_enabled or is_loopback(host):
        return
    if allow_unauthenticated:
        log.warning("serving on %s WITHOUT authentication (allowed by allow_unauthenticated): any client that "
                    "reaches this address can read, label and delete studies", host)
        return
    raise ExposureError(
        f"refusing to serve on {host} without authentication: any client on the network could delete studies "
        "and labels and read /logs/. Enable MONAI Label's authentication (MONAI_LABEL_AUTH_ENABLE=true and "
        "MONAI_LABEL_AUTH_REALM_URI=<Keycloak realm URL>; see docs/security.md), or serve on loopback "
        "(--host 127.0.0.1), or accept the risk with --conf allow_unauthenticated true "
        "(or LUMBARSEG_ALLOW_UNAUTHENTICATED=true)")


def allow_unauthenticated(conf: dict) -> bool:
    return (str(conf.get("allow_unauthenticated", "")).lower() in TRUE
            or os.environ.get("LUMBARSEG_ALLOW_UNAUTHENTICATED", "").lower() in TRUE)


def install_token_check() -> None:
    """Replace MONAI Label's token decoding (see the module doc); idempotent."""
    import jwt
    import requests
    from monailabel.config import settings
    from monailabel.endpoints.user import auth

    if getattr(auth.from_token, "lumbarseg", False):
        return
    algorithms = [a.strip() for a in os.environ.get("LUMBARSEG_AUTH_ALGORITHMS", "RS256").split(",") if a.strip()]
    if any(a.upper().startswith("HS") or a.lower() == "none" for a in algorithms):
        # the realm publishes a public key: an HMAC "secret" equal to it is the classic forgery
        raise ExposureError(f"LUMBARSEG_AUTH_ALGORITHMS={algorithms}: only asymmetric algorithms (RS256, ES256, "
                            "PS256, ...) can be checked against the realm's public key")

    def from_token(token: str):
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            return auth.DEFAULT_USER
        try:
            key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        except (requests.RequestException, KeyError, TypeError, ValueError) as err:
            log.error("authentication realm %s: %s", settings.MONAI_LABEL_AUTH_REALM_URI, err)
            raise HTTPException(status_code=503, detail="authentication realm unavailable: cannot fetch its "
                                                        "public key; try again later") from err
        payload = jwt.decode(token, key, algorithms=algorithms,
                             options={"verify_signature": True, "verify_aud": False, "verify_exp": True,
                                      "require": ["exp"]})
        roles = payload
        for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
            roles = roles.get(part) if isinstance(roles, dict) else None
        roles = [str(r) for r in roles] if isinstance(roles, (list, tuple)) else []
        return auth.User(username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
                         email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                         name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=roles)

    from_token.lumbarseg = True  # type: ignore[attr-defined]
    auth.from_token = from_token  # get_current_user looks it up at call time


# --- bounds on the request itself ---------------------------------------------------------------

def max_upload_bytes() -> int:
    """The largest body that may carry a file (``multipart/form-data``): an uncompressed NIfTI of
    :data:`lumbarseg.io.budget.MAX_VOXELS` float32 voxels, its largest header, and 1 MiB of
    multipart framing and form fields (273 MiB). Any study the readers would accept fits (int16,
    uint8 and float32 raw, or gzipped); a float64 study at the voxel limit must be sent gzipped."""
    from lumbarseg.io.budget import MAX_HEADER_BYTES, MAX_VOXELS

    return MAX_VOXELS * 4 + MAX_HEADER_BYTES + 2**20


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


class RequestLimits:
    """ASGI wrapper: refuses a request over its bounds before the endpoint reads its body.

    * the URL (path and query) over ``max_target`` bytes: 414; more than ``max_headers`` header
      fields: 431 (uvicorn itself answers 400 and closes to a request head over 16 KiB, h11's
      limit, before the app sees it);
    * a body over its bound: 413. A body of one of :data:`FILE_TYPES` may carry a file and gets
      ``upload`` bytes; every other body (JSON, url-encoded form) gets ``plain``. A ``Content-Length``
      over the bound is refused before a byte of the body is read; a chunked body is counted as
      it arrives and cut off at the bound (the endpoint sees the client disconnect; the 413 goes
      out instead of whatever it would answer)."""

    def __init__(self, app, *, plain: int = MAX_PLAIN_BODY, upload: int | None = None, max_target: int = MAX_TARGET,
                 max_headers: int = MAX_HEADERS):
        self.app = app
        self.plain = plain
        self.upload = max_upload_bytes() if upload is None else upload
        self.max_target = max_target
        self.max_headers = max_headers
        self.refused = 0

    @staticmethod
    async def _answer(send, status: int, detail: str) -> None:
        import json

        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        target = len(scope.get("raw_path") or scope.get("path", "").encode()) + len(scope.get("query_string") or b"")
        headers = scope.get("headers") or []
        if target > self.max_target:
            self.refused += 1
            return await self._answer(send, 414, f"URL of {target:,} bytes, over the limit of {self.max_target:,} "
                                                 "(path and query string): ids and tags are short names")
        if len(headers) > self.max_headers:
            self.refused += 1
            return await self._answer(send, 431, f"{len(headers)} header fields, over the limit of {self.max_headers}")
        content_type = length = b""
        for name, value in headers:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        upload = content_type.lower().lstrip().startswith(FILE_TYPES)
        limit = self.upload if upload else self.plain
        what = (f"a request with a file may carry at most {_mib(limit)} (an uncompressed study at the voxel limit "
                "of lumbarseg.io.budget, its header and the form)") if upload else \
            f"a request without a file (JSON, form fields) may carry at most {_mib(limit)}"
        if length.strip().isdigit() and int(length) > limit:
            self.refused += 1
            return await self._answer(send, 413, f"request body of {int(length):,} bytes is too large: {what}")

        received = 0
        cut = started = False

        async def limited_receive():
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    self.refused += 1
                    if not started:
                        await self._answer(send, 413, f"request body over {limit:,} bytes is too large: {what}")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if cut:
                return  # the 413 went out; the endpoint's answer to the cut-off body is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # the endpoint failing on the body we cut off: already answered 413
            if not cut:
                raise
            log.info("request body cut off at %d bytes (413): %s %s", limit, scope.get("method"), scope.get("path"))


def install_request_limits(app, limits: RequestLimits | None = None) -> RequestLimits:
    """Put :class:`RequestLimits` in front of ``app``'s router, inside Starlette's error and CORS
    middleware (so a browser client sees the 413 with its CORS headers); idempotent."""
    installed = getattr(app.state, "lumbarseg_request_limits", None)
    if installed is not None:
        return installed
    limits = limits or RequestLimits(app.router)
    limits.app = app.router
    if app.middleware_stack is None:  # built at the first ASGI call (the lifespan); build it now
        app.middleware_stack = app.build_middleware_stack()
    node = app.middleware_stack
    while node is not None and getattr(node, "app", None) is not app.router:
        node = getattr(node, "app", None)
    if node is None:  # an unexpected stack: wrap all of it
        limits.app = app.middleware_stack
        app.middleware_stack = limits
    else:
        node.app = limits
    app.state.lumbarseg_request_limits = limits
    log.info("request bounds: body without a file %s, with a file %s, URL %d bytes, %d headers",
             _mib(limits.plain), _mib(limits.upload), limits.max_target, limits.max_headers)
    return limits


# --- inference off the event loop ----------------------------------------------------------------

class InferQueue:
    """``workers`` threads run infers; at most ``bound`` requests are admitted (running plus
    waiting); the rest are refused at once with 503. The event loop only waits on futures."""

    def __init__(self, workers: int, bound: int):
        if workers < 1 or bound < workers:
            raise ValueError(f"infer_workers {workers} must be >= 1 and infer_queue {bound} >= infer_workers")
        self.workers = workers
        self.bound = bound
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="INFER")
        self._lock = threading.Lock()
        self.admitted = 0
        self.running = 0
        self.refused = 0

    def state(self) -> dict:
        with self._lock:
            return {"workers": self.workers, "queue_bound": self.bound, "admitted": self.admitted,
                    "running": self.running, "waiting": self.admitted - self.running, "refused": self.refused}

    def _admit(self) -> None:
        with self._lock:
            if self.admitted >= self.bound:
                self.refused += 1
                raise HTTPException(
                    status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
                    detail=f"inference queue full: {self.admitted} infer requests running or waiting (bound "
                           f"{self.bound}, {self.workers} running at a time; --conf infer_queue / infer_workers); "
                           f"retry in a few seconds")
            self.admitted += 1

    def _release(self, _future=None) -> None:
        with self._lock:
            self.admitted -= 1

    def _run(self, fn, *args, **kwargs):
        with self._lock:
            self.running += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    async def submit(self, fn, *args, **kwargs):
        self._admit()
        try:
            future = self.pool.submit(self._run, fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)  # released when the work ends, even if the client left
        return await asyncio.wrap_future(future)


def infer_queue_from(conf: dict) -> InferQueue:
    try:
        workers = int(conf.get("infer_workers", DEFAULT_INFER_WORKERS))
        bound = int(conf.get("infer_queue", DEFAULT_INFER_QUEUE))
    except ValueError as err:
        raise ValueError(f"--conf infer_workers / infer_queue: {err}") from err
    return InferQueue(workers, bound)


def _find_route(router, path: str, method: str, prefix: str = ""):
    """``(router, index)`` of the ``APIRoute`` for ``method prefix+path``: in ``router`` itself or
    in a router it includes (FastAPI >= 0.16x keeps included routers as ``_IncludedRouter``
    branches; older versions copy their routes into the app's list)."""
    from fastapi.routing import APIRoute

    for i, route in enumerate(router.routes):
        if isinstance(route, APIRoute) and prefix + route.path == path and method in route.methods:
            return router, i
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            found = _find_route(included, path, method, prefix + str(getattr(context, "prefix", "") or ""))
            if found:
                return found
    return None


def _replace(app, path: str, method: str, endpoint=None, **kwargs):
    """Put a route for ``method path`` where MONAI Label's is (the same router, the same place in
    the routing order); ``endpoint`` defaults to MONAI Label's own. Returns the old route."""
    found = _find_route(app.router, path, method)
    if found is None:
        raise RuntimeError(f"MONAI Label has no {method} {path} route to replace (monailabel version changed?)")
    router, i = found
    old = router.routes[i]
    prefix = getattr(router, "prefix", "") or ""
    local = old.path[len(prefix):] if prefix and old.path.startswith(prefix) else old.path
    router.add_api_route(local, endpoint or old.endpoint, methods=[method], name=old.name, summary=old.summary,
                         tags=old.tags, include_in_schema=old.include_in_schema, **kwargs)
    router.routes[i] = router.routes.pop()
    getattr(router, "_mark_routes_changed", lambda: None)()
    app.openapi_schema = None
    return old


def check_train_params(params) -> None:
    """The training request's ``preset`` (top level, or per model for ``POST /train/``) must be a
    preset name (:func:`lib.guards.training_preset`, 422 otherwise). MONAI Label runs a train
    task in a subprocess and answers ``SUBMITTED`` at once, so the task's own check came too late
    to refuse the request; this runs in the server before the task is submitted."""
    from lib import guards

    if not isinstance(params, dict):
        return
    guards.training_preset(params)
    for value in params.values():
        if isinstance(value, dict):
            guards.training_preset(value)


def install_train_check(app) -> None:
    """``POST /train/{model}`` and ``POST /train/`` check their parameters
    (:func:`check_train_params`) after the role check, before MONAI Label submits the task."""
    from monailabel.config import settings

    api = settings.MONAI_LABEL_API_STR
    for path in (f"{api}/train/{{model}}", f"{api}/train/"):
        found = _find_route(app.router, path, "POST")
        if found is None:
            raise RuntimeError(f"MONAI Label has no POST {path} route (monailabel version changed?)")
        original = found[0].routes[found[1]].endpoint

        def checked(original=original):
            @functools.wraps(original)  # same parameters and role check as MONAI Label's endpoint
            async def api_train(**kwargs):
                check_train_params(kwargs.get("params"))
                return await original(**kwargs)
            return api_train

        _replace(app, path, "POST", checked())


def install_routes(app, queue: InferQueue) -> None:
    """See the module doc; idempotent (a ``POST /reload`` builds a new app object, not a new
    server)."""
    from monailabel.config import settings
    from monailabel.endpoints import infer as infer_endpoints
    from monailabel.endpoints.user.auth import RBAC

    if getattr(app.state, "lumbarseg_infer_queue", None) is not None:
        return
    api = settings.MONAI_LABEL_API_STR
    admin = [Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))]

    found = _find_route(app.router, f"{api}/infer/{{model}}", "POST")
    if found is None:
        raise RuntimeError("MONAI Label has no POST /infer/{model} route (monailabel version changed?)")
    original = found[0].routes[found[1]].endpoint
    run_inference = infer_endpoints.run_inference
    names = set(inspect.signature(original).parameters) - {"user"}
    if not names <= set(inspect.signature(run_inference).parameters):
        raise RuntimeError(f"monailabel's infer endpoint takes {sorted(names)}; run_inference does not: cannot move "
                           "inference off the event loop")

    @functools.wraps(original)  # same parameters (and the same role check) as MONAI Label's endpoint
    async def api_run_inference(**kwargs):
        kwargs.pop("user", None)
        return await queue.submit(run_inference, **kwargs)

    _replace(app, f"{api}/infer/{{model}}", "POST", api_run_inference)

    async def health():
        return {"status": "ok", "infer": queue.state()}

    app.router.add_api_route(f"{api}/health/", health, methods=["GET"], tags=["Health"],
                             summary="Liveness: answers without a token while infers run")

    install_train_check(app)
    for method in ("PUT", "DELETE"):
        _replace(app, f"{api}/model/{{model}}", method, dependencies=admin)
    if _find_route(app.router, "/reload", "POST"):
        _replace(app, "/reload", "POST", dependencies=admin)
    app.state.lumbarseg_infer_queue = queue
    log.info("infers run on %d worker thread(s), at most %d admitted", queue.workers, queue.bound)


def serve(conf: dict) -> None:
    """Everything above, for the server process (called from the app's ``server_mode(True)``)."""
    from monailabel.config import settings

    check_exposure(listen_host(), auth_enabled=bool(settings.MONAI_LABEL_AUTH_ENABLE),
                   allow_unauthenticated=allow_unauthenticated(conf))
    install_token_check()
    import monailabel.app

    install_routes(monailabel.app.app, infer_queue_from(conf))
    install_request_limits(monailabel.app.app)
