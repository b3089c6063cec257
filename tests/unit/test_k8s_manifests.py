"""Kubernetes manifests (deploy/k8s): schema-valid offline, consistent with each other and the config."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from flotilla.health import SECTIONS, SINGLE_WRITERS
from libs.common.config import DEFAULT_CONFIG, FleetConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS_K8S = ROOT / "deploy" / "monitoring" / "prometheus-k8s.yml"
K8S_VERSION = "1.30.0"
NAMESPACE = "flotilla"
KUSTOMIZATION = "kustomization.yaml"
SERVICE_PODS = frozenset(SECTIONS)
SERVICE_UID = 10001

# Bus socket -> the service that binds it (config/flotilla.toml [bus]).
BINDERS = {
    "md_pub": "market-data",
    "sig_in": "risk",
    "risk_pub": "risk",
    "orders": "execution",
    "exec_pub": "execution",
    "ctl_pub": "kill-switch",
    "ctl_cmd": "kill-switch",
    "ctl_ack": "kill-switch",
}
# Bus socket -> the pods that connect to it, and so the only ones its NetworkPolicy may admit.
CLIENTS = {
    "md_pub": {"signal", "risk", "execution"},
    "sig_in": {"signal"},
    "risk_pub": {"execution"},
    "orders": {"risk"},
    "exec_pub": {"risk"},
    "ctl_pub": set(SERVICE_PODS),
    "ctl_cmd": {"operator"},
    "ctl_ack": set(SERVICE_PODS),
}
REDIS_CLIENTS = set(SERVICE_PODS) | {"operator"}
EXTERNAL = "external"  # an address outside the cluster


def yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"})


@cache
def documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every Kubernetes object in deploy/k8s (not the kustomization)."""
    docs = []
    for path in yaml_files(K8S):
        if path.name != KUSTOMIZATION:
            docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def objects(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in documents() if d["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in objects(kind) if d["metadata"]["name"] == name]
    return found


def workloads() -> list[dict[str, Any]]:
    return objects("Deployment") + objects("StatefulSet")


def workload(name: str) -> dict[str, Any]:
    (found,) = [w for w in workloads() if w["metadata"]["name"] == name]
    return found


def pod_labels(w: dict[str, Any]) -> dict[str, str]:
    return w["spec"]["template"]["metadata"]["labels"]


def pod_spec(w: dict[str, Any]) -> dict[str, Any]:
    return w["spec"]["template"]["spec"]


def containers(w: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(w)
    return spec["containers"] + spec.get("initContainers", [])


def container_ports(w: dict[str, Any]) -> dict[str, int]:
    """Port name (or str(number) if unnamed) -> containerPort, over all containers."""
    return {
        p.get("name", str(p["containerPort"])): p["containerPort"]
        for c in containers(w)
        for p in c.get("ports", [])
    }


def configmap_env() -> dict[str, str]:
    return named("ConfigMap", "flotilla-env")["data"]


@cache
def fleet_config() -> FleetConfig:
    return load_config(DEFAULT_CONFIG, env={})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (an empty selector selects everything)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def populations() -> dict[str, tuple[str, dict[str, str]]]:
    """Pods that might knock on the fleet's ports: name -> (namespace, labels)."""
    pods = {w["metadata"]["name"]: (NAMESPACE, pod_labels(w)) for w in workloads()}
    pods["operator"] = (NAMESPACE, {"flotilla.io/role": "operator"})
    pods["prometheus"] = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    pods["stranger"] = (NAMESPACE, {"app": "debug"})
    pods["risk-impostor"] = ("default", pod_labels(workload("risk")))
    pods["operator-impostor"] = ("default", {"flotilla.io/role": "operator"})
    return pods


def peer_admits(peer: dict[str, Any], namespace: str, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy `from` entry admits a pod (policies all live in NAMESPACE)."""
    if "ipBlock" in peer:
        return False
    ns_selector = peer.get("namespaceSelector")
    if ns_selector is None:
        in_namespace = namespace == NAMESPACE
    else:
        in_namespace = selects(ns_selector, {"kubernetes.io/metadata.name": namespace})
    return in_namespace and selects(peer.get("podSelector", {}), labels)


def rule_covers(rule: dict[str, Any], port: int, named_ports: dict[str, int]) -> bool:
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        value = p.get("port")
        if p.get("protocol", "TCP") != "TCP":
            continue
        if value is None:
            return True
        number = named_ports.get(value) if isinstance(value, str) else value
        if number is not None and number <= port <= p.get("endPort", number):
            return True
    return False


def ingress_peers(dest: str, port: int) -> list[dict[str, Any]] | None:
    """The `from` peers admitted to dest's port; None when anyone is (no policy or an open rule)."""
    w = workload(dest)
    peers: list[dict[str, Any]] = []
    isolated = False
    for policy in objects("NetworkPolicy"):
        spec = policy["spec"]
        if not selects(spec["podSelector"], pod_labels(w)):
            continue
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        isolated = True
        for rule in spec.get("ingress", []):
            if rule_covers(rule, port, container_ports(w)):
                if not rule.get("from"):
                    return None
                peers += rule["from"]
    return peers if isolated else None


def admitted(dest: str, port: int) -> set[str]:
    """Which of populations() (and EXTERNAL) may open a connection to dest's port."""
    peers = ingress_peers(dest, port)
    if peers is None:
        return set(populations()) | {EXTERNAL}
    found = {EXTERNAL} if any("ipBlock" in p for p in peers) else set()
    for name, (namespace, labels) in populations().items():
        if any(peer_admits(p, namespace, labels) for p in peers):
            found.add(name)
    return found


def bus_port(key: str) -> int:
    port = urlsplit(getattr(fleet_config().bus, key)).port
    assert port is not None
    return port


# --- schema validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [d for _, d in documents()],
    ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in documents()],
)
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    """Every object validates strictly (no unknown fields) against the bundled 1.30 schema."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "template", "spec", "containers", 0, "imagePullPolcy"), "IfNotPresent"),
        (("metadata", "lables"), {"a": "b"}),
        (("spec", "replicas"), "2"),
        (("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), "9102"),
    ],
    ids=["unknown-container-field", "unknown-metadata-field", "string-replicas", "string-port"],
)
def test_validator_rejects_a_broken_manifest(path: tuple[Any, ...], value: Any) -> None:
    """The validation call above really fails on an unknown field or a wrong type."""
    broken = copy.deepcopy(workload("signal"))
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml's resources are exactly the YAML files beside it."""
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text())
    listed = kustomization["resources"]

    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in yaml_files(K8S)} - {KUSTOMIZATION}


def test_namespaced_objects_live_in_the_flotilla_namespace() -> None:
    """Everything but the Namespace itself names namespace flotilla explicitly."""
    assert [d["metadata"]["name"] for d in objects("Namespace")] == [NAMESPACE]
    for _, d in documents():
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]["name"]


# --- cross-references ----------------------------------------------------------------------


def test_workload_selectors_match_their_pod_labels() -> None:
    """Each Deployment/StatefulSet selects its own pod template and no other workload's."""
    for w in workloads():
        others = [o for o in workloads() if o is not w]
        assert selects(w["spec"]["selector"], pod_labels(w)), w["metadata"]["name"]
        assert not any(selects(w["spec"]["selector"], pod_labels(o)) for o in others)


def test_every_flotilla_service_has_one_workload() -> None:
    """The five services and Redis each run as exactly one workload, labelled by name."""
    names = sorted(w["metadata"]["name"] for w in workloads())

    assert names == sorted([*SERVICE_PODS, "redis"])
    for w in workloads():
        labels = pod_labels(w)
        assert labels["app.kubernetes.io/name"] == w["metadata"]["name"]
        assert labels["app.kubernetes.io/part-of"] == "flotilla"
        assert labels["app.kubernetes.io/component"]


def test_services_select_pods_that_expose_their_target_ports() -> None:
    """Each Service selects a workload, and each targetPort is a containerPort of the same number."""
    for svc in objects("Service"):
        selector = {"matchLabels": svc["spec"]["selector"]}
        targets = [w for w in workloads() if selects(selector, pod_labels(w))]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = container_ports(targets[0])
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            number = ports.get(target) if isinstance(target, str) else target
            assert number in ports.values(), (svc["metadata"]["name"], target)
            assert number == p["port"], (svc["metadata"]["name"], p)


def test_statefulset_names_its_governing_service() -> None:
    """Redis's serviceName is an existing headless Service."""
    svc = named("Service", workload("redis")["spec"]["serviceName"])

    assert svc["spec"]["clusterIP"] == "None"


def references(w: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap, Secret and PVC a pod template refers to."""
    refs = set()
    for c in containers(w):
        for src in c.get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in src:
                    refs.add((kind, src[key]["name"]))
        for env in c.get("env", []):
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if key in env.get("valueFrom", {}):
                    refs.add((kind, env["valueFrom"][key]["name"]))
    for vol in pod_spec(w).get("volumes", []):
        sources = [vol, *vol.get("projected", {}).get("sources", [])]
        for src in sources:
            if "configMap" in src:
                refs.add(("ConfigMap", src["configMap"]["name"]))
            if "secret" in src:
                refs.add(("Secret", src["secret"].get("secretName") or src["secret"].get("name")))
        if "persistentVolumeClaim" in vol:
            refs.add(("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]))
    return refs


def test_referenced_configmaps_secrets_and_claims_exist() -> None:
    """Every ConfigMap, Secret and PVC a pod refers to is defined in deploy/k8s."""
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in documents()}
    for w in workloads():
        assert references(w) <= defined, (w["metadata"]["name"], references(w) - defined)


def test_only_execution_holds_secrets() -> None:
    """The venue-keys Secret is referenced by the execution Deployment and nothing else."""
    holders = {
        w["metadata"]["name"]: {name for kind, name in references(w) if kind == "Secret"}
        for w in workloads()
    }

    assert {name: s for name, s in holders.items() if s} == {"execution": {"venue-keys"}}


def test_secret_template_holds_only_placeholders() -> None:
    """The venue keys are placeholders for Binance and Alpaca, never real values."""
    secret = named("Secret", "venue-keys")

    assert "data" not in secret
    assert set(secret["stringData"].values()) == {"REPLACE_ME"}
    assert {k.split("-")[0] for k in secret["stringData"]} == {"binance", "alpaca"}


def test_configmap_urls_name_services_with_those_ports() -> None:
    """Every tcp:// and redis:// URL in the ConfigMap is a Service of this fleet with that port."""
    urls = [urlsplit(v) for v in configmap_env().values() if v.startswith(("tcp://", "redis://"))]

    assert len(urls) == len(BINDERS) + 1
    for url in urls:
        svc = named("Service", url.hostname or "")
        assert url.port in {p["port"] for p in svc["spec"]["ports"]}, url.geturl()


def test_services_take_their_settings_from_the_configmap() -> None:
    """Each service pod gets its settings from the ConfigMap through envFrom, and only from it."""
    for name in SERVICE_PODS:
        (container,) = pod_spec(workload(name))["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "flotilla-env"}}]
        if name == "execution":  # only paths to its mounted venue keys, never a value
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            for var in container["env"]:
                assert var["name"].endswith("_FILE"), var
                assert var["value"].startswith(mounts["venue-keys"] + "/"), var
        else:
            assert "env" not in container, name


def test_configmap_is_a_valid_override_of_the_fleet_config() -> None:
    """The ConfigMap's FLOTILLA__ variables load cleanly over config/flotilla.toml."""
    cfg = load_config(DEFAULT_CONFIG, env=configmap_env())

    assert cfg.bus.orders == "tcp://execution:5553"
    assert cfg.market_data.speed == float(configmap_env()["FLOTILLA__MARKET_DATA__SPEED"])


@pytest.mark.parametrize("key", sorted(BINDERS))
def test_bind_ports_agree_with_the_fleet_config(key: str) -> None:
    """Each [bus] URL points at its binder's Service, on the port the TOML and the pod use."""
    url = urlsplit(configmap_env()[f"FLOTILLA__BUS__{key.upper()}"])

    assert url.scheme == "tcp"
    assert url.hostname == BINDERS[key]
    assert url.port == bus_port(key)
    assert bus_port(key) in container_ports(workload(BINDERS[key])).values()


@pytest.mark.parametrize("service", sorted(SERVICE_PODS))
def test_metrics_ports_agree_with_the_fleet_config(service: str) -> None:
    """Each service's container port named `metrics` is its section's metrics_port."""
    section = getattr(fleet_config(), SECTIONS[service])

    assert container_ports(workload(service))["metrics"] == section.metrics_port


def test_market_data_waits_for_every_signal_replica() -> None:
    """market-data's expected signal consumers equal the signal Deployment's replicas."""
    cfg = load_config(DEFAULT_CONFIG, env=configmap_env())

    assert cfg.market_data.wait_for_consumers["signal"] == workload("signal")["spec"]["replicas"]


def test_prometheus_config_scrapes_every_metrics_port() -> None:
    """The k8s scrape config keeps flotilla pods' `metrics` ports, which every service has."""
    job = yaml.safe_load(PROMETHEUS_K8S.read_text())["scrape_configs"][0]
    keeps = {
        r["source_labels"][0]: r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }

    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [NAMESPACE]
    assert keeps["__meta_kubernetes_pod_label_app_kubernetes_io_part_of"] == "flotilla"
    assert keeps["__meta_kubernetes_pod_container_port_name"] == "metrics"
    for name in SERVICE_PODS:
        assert pod_labels(workload(name))["app.kubernetes.io/part-of"] == "flotilla"


# --- how the pods run ----------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(SERVICE_PODS))
def test_services_run_the_local_images(service: str) -> None:
    """Each service runs flotilla/<name>:0.1.0, pulled only if not already on the node."""
    (container,) = pod_spec(workload(service))["containers"]

    assert container["image"] == f"flotilla/{service}:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("service", sorted(SERVICE_PODS))
def test_probes_run_flotilla_health(service: str) -> None:
    """Liveness (and startup) run flotilla.health; readiness adds --ready."""
    (container,) = pod_spec(workload(service))["containers"]
    health = ["python", "-m", "flotilla.health"]

    assert container["livenessProbe"]["exec"]["command"] == health
    assert container["startupProbe"]["exec"]["command"] == health
    assert container["readinessProbe"]["exec"]["command"] == [*health, "--ready"]


def test_redis_is_a_persistent_append_only_statefulset() -> None:
    """Redis keeps an append-only file on a claimed volume and is probed with redis-cli ping."""
    redis = workload("redis")
    (container,) = pod_spec(redis)["containers"]
    args = container["args"]
    data_dir = args[args.index("--dir") + 1]
    (claim,) = redis["spec"]["volumeClaimTemplates"]

    assert redis["kind"] == "StatefulSet"
    assert redis["spec"]["replicas"] == 1
    assert args[args.index("--appendonly") + 1] == "yes"
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in container["volumeMounts"]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert container["livenessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


@pytest.mark.parametrize("service", sorted(SINGLE_WRITERS | {"market-data"}))
def test_single_instance_services_run_one_replica_and_recreate(service: str) -> None:
    """Single writers and the feed never overlap: one replica, old pod gone before the new one."""
    spec = workload(service)["spec"]

    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_signal_scales_and_no_disruption_budget_blocks_a_drain() -> None:
    """signal has a budget; no budget can forbid every eviction of the pods it covers."""
    budgets = objects("PodDisruptionBudget")
    covered = {
        w["metadata"]["name"]: b
        for b in budgets
        for w in workloads()
        if selects(b["spec"]["selector"], pod_labels(w))
    }

    assert workload("signal")["spec"]["replicas"] >= 1
    assert "signal" in covered
    for name, budget in covered.items():
        replicas = workload(name)["spec"]["replicas"]
        if "maxUnavailable" in budget["spec"]:
            assert budget["spec"]["maxUnavailable"] not in (0, "0%"), name
        else:
            assert budget["spec"]["minAvailable"] < replicas, name


def test_pods_run_as_non_root_with_a_read_only_root() -> None:
    """Every container: non-root uid, no privilege escalation, read-only root, no capabilities."""
    for w in workloads():
        pod_ctx = pod_spec(w).get("securityContext", {})
        for c in containers(w):
            ctx = {**pod_ctx, **c.get("securityContext", {})}
            assert ctx["runAsNonRoot"] is True, c["name"]
            assert ctx["runAsUser"] > 0, c["name"]
            assert ctx["allowPrivilegeEscalation"] is False, c["name"]
            assert ctx["readOnlyRootFilesystem"] is True, c["name"]
            assert "ALL" in ctx["capabilities"]["drop"], c["name"]
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        assert pod_spec(w)["automountServiceAccountToken"] is False


@pytest.mark.parametrize("service", sorted(SERVICE_PODS))
def test_services_run_as_the_image_uid_with_writable_run_dir(service: str) -> None:
    """Services run as uid 10001 and get volumes at FLOTILLA_RUN_DIR and /tmp."""
    spec = pod_spec(workload(service))
    (container,) = spec["containers"]
    mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}

    assert spec["securityContext"]["runAsUser"] == SERVICE_UID
    assert container["securityContext"]["runAsUser"] == SERVICE_UID
    assert mounts == {"/var/lib/flotilla", "/tmp"}


def test_every_container_has_requests_and_limits() -> None:
    """CPU and memory requests and limits are set on every container."""
    for w in workloads():
        for c in containers(w):
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) >= {"cpu", "memory"}, (c["name"], bound)


# --- network policy ------------------------------------------------------------------------


def test_ingress_is_denied_by_default() -> None:
    """A policy selects every pod for ingress and admits nothing by itself."""
    assert any(
        p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Ingress"]
        and not p["spec"].get("ingress")
        for p in objects("NetworkPolicy")
    )


@pytest.mark.parametrize("key", sorted(CLIENTS))
def test_bus_socket_admits_exactly_its_clients(key: str) -> None:
    """Each bus port on its binder admits its connecting pods and no one else."""
    assert admitted(BINDERS[key], bus_port(key)) == CLIENTS[key]


def test_redis_admits_only_service_and_operator_pods() -> None:
    """Redis's port admits the five services and operators."""
    port = urlsplit(configmap_env()["FLOTILLA_REDIS_URL"]).port or 6379

    assert admitted("redis", port) == REDIS_CLIENTS


@pytest.mark.parametrize("service", sorted(SERVICE_PODS))
def test_metrics_port_admits_only_prometheus(service: str) -> None:
    """Each service's metrics port admits Prometheus pods only."""
    port = getattr(fleet_config(), SECTIONS[service]).metrics_port

    assert admitted(service, port) == {"prometheus"}


def test_orders_port_admits_only_risk_pods_of_this_namespace() -> None:
    """Only risk's pods may reach execution's orders socket (5553): no one else can trade."""
    peers = ingress_peers("execution", bus_port("orders"))

    assert peers, "orders is open to every source"
    assert bus_port("orders") == 5553
    assert admitted("execution", 5553) == {"risk"}
    for peer in peers:
        assert set(peer) == {"podSelector"}, peer


def test_command_port_admits_only_operator_pods_of_this_namespace() -> None:
    """Only operator pods may reach the kill switch's command socket (5556), not the services."""
    peers = ingress_peers("kill-switch", bus_port("ctl_cmd"))

    assert peers, "ctl_cmd is open to every source"
    assert bus_port("ctl_cmd") == 5556
    assert admitted("kill-switch", 5556) == {"operator"}
    for peer in peers:
        assert set(peer) == {"podSelector"}, peer
        assert peer["podSelector"] == {"matchLabels": {"flotilla.io/role": "operator"}}


def test_no_port_is_open_to_strangers() -> None:
    """No container port admits an unlabelled pod of the namespace or an outside address."""
    for w in workloads():
        for port in container_ports(w).values():
            assert not {"stranger", EXTERNAL} & admitted(w["metadata"]["name"], port), port
