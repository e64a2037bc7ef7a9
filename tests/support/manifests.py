"""Kubernetes manifests under test: rendered with `kubectl kustomize`, validated against the KubeRay v1
CRD schemas (../shared/schemas/kuberay) and, for core kinds, with kubernetes-validate; their pod
templates checked for the security settings every pod must carry; a RayJob checked against the rules
KubeRay's own validation applies, which no schema expresses.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay"  # CI lays ../shared beside the clone
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
K8S_VERSION = "1.32.0"  # the API the core kinds are validated against (kubectl here is 1.32)
Obj = dict[str, Any]


def have_kubectl() -> bool:
    return shutil.which("kubectl") is not None


def render(kustomization: Path) -> list[Obj]:
    """`kubectl kustomize` output of a kustomization directory, one dict per object."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(kustomization)], capture_output=True, text=True, check=False, timeout=120
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {kustomization} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def resource_files(kustomization: Path) -> list[Path]:
    """The manifest files a kustomization lists, through its bases (for machines without kubectl)."""
    spec = yaml.safe_load((kustomization / "kustomization.yaml").read_text())
    files: list[Path] = []
    for entry in spec.get("resources", []):
        path = (kustomization / entry).resolve()
        files += resource_files(path) if path.is_dir() else [path]
    return files


def load(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def kuberay_schema(kind: str) -> Obj:
    """The CRD schema of a KubeRay kind, made strict: an object schema with `properties` accepts no
    other key unless it says so, as the API server's strict field validation (kubectl's default)
    rejects unknown fields where a lax one would drop them silently."""
    schema = json.loads((SCHEMAS / f"{kind}-ray.io-v1.json").read_text())

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    return strict(schema)


def schema_errors(obj: Obj) -> list[str]:
    """What is wrong with one object: KubeRay kinds against their CRD schema, core kinds with
    kubernetes-validate (strict). An unknown kind is an error too."""
    kind = obj.get("kind", "")
    where = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
    if kind in KUBERAY_KINDS:
        import jsonschema

        if obj.get("apiVersion") != "ray.io/v1":
            return [f"{where}: apiVersion {obj.get('apiVersion')!r}, not ray.io/v1"]
        validator = jsonschema.Draft7Validator(kuberay_schema(kind))
        return [f"{where} {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)
    except Exception as e:  # ValidationError, SchemaNotFoundError (an unknown kind), ...
        return [f"{where}: {type(e).__name__}: {str(e).splitlines()[0]}"]
    return []


def pod_specs(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """Every pod spec an object would create pods from (head and worker groups, a RayJob's own
    cluster and submitter, a Deployment's or CronJob's template...), with its path in the object."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, Obj]]:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                yield path, node
                return
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")

    yield from walk(obj.get("spec", {}), "spec")


def autoscaler_options(obj: Obj) -> Iterator[tuple[str, Obj, Obj]]:
    """The autoscaler sidecar's settings in a RayCluster spec, wherever one is (a RayJob's included),
    with the securityContext of the head pod it joins."""
    spec = obj.get("spec", {})
    for path, cluster in (("spec", spec), ("spec.rayClusterSpec", spec.get("rayClusterSpec"))):
        if isinstance(cluster, dict) and cluster.get("enableInTreeAutoscaling"):
            head_pod = cluster.get("headGroupSpec", {}).get("template", {}).get("spec", {})
            options = cluster.get("autoscalerOptions") or {}
            yield f"{path}.autoscalerOptions", options, head_pod.get("securityContext") or {}


def container_security_errors(where: str, container: Obj, pod_security: Obj) -> list[str]:
    """A container's own settings, falling back to its pod's where Kubernetes does."""
    errs = []
    sc = container.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append(f"{where}: allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        errs.append(f"{where}: capabilities do not drop ALL")
    if sc.get("privileged"):
        errs.append(f"{where}: privileged")
    if not sc.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
        errs.append(f"{where}: runAsNonRoot is not true")
    # The image's USER is a name (`ray`): without a numeric uid the kubelet cannot check runAsNonRoot
    # and refuses to start the container.
    if not sc.get("runAsUser", pod_security.get("runAsUser")):
        errs.append(f"{where}: no runAsUser other than 0")
    if (sc.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        errs.append(f"{where}: seccompProfile is not RuntimeDefault")
    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for res in ("cpu", "memory"):
            if res not in (resources.get(bound) or {}):
                errs.append(f"{where}: no {bound}.{res}")
    return errs


def security_errors(obj: Obj) -> list[str]:
    """Every pod the object makes runs as non-root, drops all capabilities, cannot escalate, uses
    the runtime's seccomp profile and sets requests and limits; so does KubeRay's autoscaler sidecar."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    errs = []
    for path, pod in pod_specs(obj):
        pod_security = pod.get("securityContext") or {}
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            errs.append(f"{name} {path}: shares the host's namespaces")
        for c in containers(pod):
            errs += container_security_errors(f"{name} {path} container {c.get('name')}", c, pod_security)
    for path, opts, pod_security in autoscaler_options(obj):
        errs += container_security_errors(f"{name} {path}", opts, pod_security)
    return errs


def rayjob_errors(job: Obj) -> list[str]:
    """The rules KubeRay (v1.7, utils/validation.go) applies to a RayJob's lifetime fields before it
    accepts one: the CRD schema cannot say them."""
    return rayjob_spec_errors(job.get("spec", {}))


def rayjob_spec_errors(spec: Obj) -> list[str]:
    """`rayjob_errors` of a RayJob's spec (a RayCronJob's jobTemplate is one: KubeRay validates it so)."""
    errs = []
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules") or []
    selector = spec.get("clusterSelector") or {}
    if not spec.get("rayClusterSpec") and not selector:
        errs.append("one of rayClusterSpec and clusterSelector must be set")
    if selector and not selector.get("ray.io/cluster"):
        errs.append("clusterSelector needs the cluster's name under ray.io/cluster")
    if selector and (spec.get("submissionMode") == "SidecarMode" or spec.get("suspend")):
        errs.append("clusterSelector supports neither SidecarMode nor suspend")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        errs.append("ttlSecondsAfterFinished without shutdownAfterJobFinishes")
    if rules and spec.get("shutdownAfterJobFinishes"):
        errs.append("shutdownAfterJobFinishes and deletionRules are mutually exclusive")
    strategy = spec.get("deletionStrategy") or {}
    if rules and ("onSuccess" in strategy or "onFailure" in strategy):
        errs.append("legacy onSuccess/onFailure and deletionRules together")
    autoscaling = bool((spec.get("rayClusterSpec") or {}).get("enableInTreeAutoscaling"))
    ttls: dict[tuple[str, str], dict[str, int]] = {}
    for i, rule in enumerate(rules):
        cond = rule.get("condition", {})
        keys = [k for k in ("jobStatus", "jobDeploymentStatus") if k in cond]
        if len(keys) != 1:
            errs.append(f"deletionRules[{i}]: exactly one of jobStatus and jobDeploymentStatus must be set")
            continue
        if selector and rule.get("policy") in ("DeleteCluster", "DeleteWorkers"):
            errs.append(f"deletionRules[{i}]: {rule.get('policy')} is not supported with clusterSelector")
        if autoscaling and rule.get("policy") == "DeleteWorkers":
            errs.append(f"deletionRules[{i}]: DeleteWorkers is not supported with autoscaling")
        by_policy = ttls.setdefault((keys[0], cond[keys[0]]), {})
        if rule.get("policy") in by_policy:
            errs.append(f"deletionRules[{i}]: duplicate rule for {rule.get('policy')} on {cond[keys[0]]}")
        by_policy[rule.get("policy")] = cond.get("ttlSeconds", 0)
    order = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")  # TTLs may not decrease along it
    for (key, status), by_policy in ttls.items():
        seq = [(p, by_policy[p]) for p in order if p in by_policy]
        for (p1, t1), (p2, t2) in itertools.pairwise(seq):
            if t2 < t1:
                errs.append(f"{key} {status}: {p2} TTL ({t2}) must be >= {p1} TTL ({t1})")
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        errs.append("activeDeadlineSeconds must be positive")
    if spec.get("backoffLimit") is not None and spec["backoffLimit"] < 0:
        errs.append("backoffLimit must not be negative")
    return errs


# Standard cron fields (what Kubernetes' CronJob controller and KubeRay's RayCronJob parse, robfig/cron's
# ParseStandard): minute, hour, day of month, month, day of week; names for months and days.
CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
CRON_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}
CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def schedule_errors(schedule: Any, time_zone: Any = None) -> list[str]:
    """What is wrong with a CronJob's or RayCronJob's schedule and timeZone (an IANA name)."""
    import zoneinfo

    errs = []
    if time_zone is not None:
        try:
            zoneinfo.ZoneInfo(str(time_zone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errs.append(f"timeZone {time_zone!r} is not an IANA time zone")
    if not isinstance(schedule, str):
        return [*errs, f"schedule {schedule!r} is not a string"]
    if schedule.strip() in CRON_MACROS:
        return errs
    fields = schedule.split()
    if len(fields) != 5 or "TZ" in schedule:
        return [*errs, f"schedule {schedule!r}: five fields expected (time zones go in timeZone)"]
    for i, (field, (lo, hi)) in enumerate(zip(fields, CRON_FIELDS, strict=True)):
        names = {n: lo + k for k, n in enumerate(CRON_NAMES.get(i, []))}
        for part in field.split(","):
            span, _, step = part.partition("/")
            bounds = [str(lo), str(hi)] if span == "*" else span.split("-")
            values = [names.get(b.lower(), int(b) if b.isdigit() else None) for b in bounds]
            if len(values) > 2 or None in values or not all(lo <= v <= hi for v in values) or values != sorted(values):
                errs.append(f"schedule {schedule!r}: field {i + 1} ({field!r}) is not a valid cron field")
                break
            if step and not (step.isdigit() and int(step) > 0):
                errs.append(f"schedule {schedule!r}: field {i + 1} has a bad step {step!r}")
                break
    return errs


def by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[Obj], kind: str) -> Obj:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def images(objs: list[Obj]) -> set[str]:
    """Every container image the objects name."""
    return {c["image"] for o in objs for _, pod in pod_specs(o) for c in containers(pod)}


def containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod["containers"]]
