"""The deployment files parse and are consistent with the repository and with each other:
the paths they build from or mount exist, the Triton ports the app uses are the ones Triton
listens on and publishes, the Kubernetes Service reaches the replicas' ports. (Nothing here
runs Docker or a cluster; this machine has neither a GPU nor a container runtime.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
REPO = DOCKER.parent


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def triton_ports(command: list[str]) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for arg in command if (m := re.fullmatch(r"--(\w+)-port=(\d+)", arg))}


def test_compose_builds_and_mounts_what_exists():
    services = compose()["services"]
    assert set(services) == {"triton", "app", "orthanc"}
    for service in services.values():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == REPO
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file()
            for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile.read_text(), re.M):
                assert all((context / s).exists() for s in source.split()), f"{dockerfile}: COPY {source}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).is_dir(), volume
    assert services["triton"]["volumes"] == ["../model_repository:/models:ro"]
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_app_reaches_triton_on_the_port_triton_serves():
    services = compose()
    triton_cmd = re.search(r'^CMD \[(.*?)\]$', (DOCKER / "Dockerfile.triton").read_text(), re.M | re.S).group(1)
    ports = triton_ports([a.strip().strip('"') for a in triton_cmd.replace("\\\n", " ").split(",")])
    assert ports == {"http": 8010, "grpc": 8011, "metrics": 8012}
    app = services["services"]["app"]["command"]
    conf = {app[i + 1]: app[i + 2] for i, a in enumerate(app) if a == "--conf"}
    assert conf == {"backend": "triton", "triton_url": f"grpc://triton:{ports['grpc']}"}
    assert "8000:8000" in services["services"]["app"]["ports"]


def test_triton_is_reachable_only_by_the_app_on_an_internal_network():
    """Issue 16 item 2: no Triton port is published on the host; Triton's networks are all
    internal, and the app shares one with it (it reaches it by service name)."""
    doc = compose()
    triton, app = doc["services"]["triton"], doc["services"]["app"]
    assert not triton.get("ports") and not triton.get("expose", [])
    networks = doc.get("networks") or {}
    assert triton.get("networks") and all(networks[n].get("internal") is True for n in triton["networks"])
    assert set(triton["networks"]) & set(app.get("networks", []))


def test_triton_and_the_app_share_the_admin_key():
    """Both get the same compose secret; the app's client reads it through LUMBARSEG_TRITON_KEY_FILE,
    Triton's entrypoint through the same file."""
    from lumbarseg.triton.server import KEY_FILE_ENV

    doc = compose()
    triton, app = doc["services"]["triton"], doc["services"]["app"]
    (secret,) = set(triton.get("secrets", [])) & set(app.get("secrets", []))
    assert "file" in doc["secrets"][secret]
    assert app["environment"][KEY_FILE_ENV] == f"/run/secrets/{secret}"
    assert triton["environment"][KEY_FILE_ENV] == f"/run/secrets/{secret}"
    assert f"docker/{doc['secrets'][secret]['file'].removeprefix('./')}" in (REPO / ".gitignore").read_text()


def test_the_triton_entrypoint_restricts_the_apis_and_refuses_to_start_without_a_key(tmp_path):
    """The image's entrypoint appends the restricted-API flags (the same APIs and header as the
    local launcher, HTTP inference sealed by a value drawn at each start) to the command it
    runs, and will not start Triton without a key."""
    import subprocess

    from lumbarseg.triton.server import RESTRICTED_APIS, restricted_api_arguments

    dockerfile = (DOCKER / "Dockerfile.triton").read_text()
    entry = re.search(r'^ENTRYPOINT \[(.*?)\]$', dockerfile, re.M).group(1)
    script = next(a.strip().strip('"') for a in entry.split(","))
    source = re.search(rf"^COPY\s+(\S+)\s+{re.escape(script)}$", dockerfile, re.M).group(1)
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    env = {"PATH": "/usr/bin:/bin", "LUMBARSEG_TRITON_KEY_FILE": str(key_file)}
    out = subprocess.run(["sh", str(REPO / source), "echo", "tritonserver", "--http-port=8010"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    command, flags = out.stdout.split()[:2], out.stdout.split()[2:]
    sealed = re.fullmatch(r"--http-restricted-api=inference:lumbarseg-sealed=([0-9a-f]{32})", flags[1]).group(1)
    assert command == ["tritonserver", "--http-port=8010"]
    assert flags == restricted_api_arguments("s3cret-key", sealed)
    again = subprocess.run(["sh", str(REPO / source), "echo", "tritonserver"], env=env, capture_output=True, text=True,
                           timeout=30).stdout
    assert sealed not in again  # drawn at each start
    assert "inference" in RESTRICTED_APIS and "model-repository" in RESTRICTED_APIS
    env["LUMBARSEG_TRITON_KEY_FILE"] = str(tmp_path / "missing")
    out = subprocess.run(["sh", str(REPO / source), "echo", "tritonserver"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0 and "admin key" in out.stderr and not out.stdout


def test_kubernetes_replicas_sit_behind_a_service_on_their_ports():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DOCKER / "k8s" / "triton.yaml").read_text())}
    deployment, service = docs["Deployment"], docs["Service"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert triton_ports(container["args"]) == named
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(named)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == claim


def test_kubernetes_triton_gets_the_key_and_only_the_app_reaches_it():
    from lumbarseg.triton.server import KEY_FILE_ENV

    docs = {d["kind"]: d for d in yaml.safe_load_all((DOCKER / "k8s" / "triton.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mount = next(m for m in container["volumeMounts"] if env[KEY_FILE_ENV].startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"]
    assert docs["Service"]["spec"].get("type", "ClusterIP") == "ClusterIP"
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert "Ingress" in policy["policyTypes"]
    (rule,) = policy["ingress"]
    assert all("podSelector" in source for source in rule["from"])
