"""The cluster files, checked with the real validators: the Dockerfile against pyproject.toml,
cluster.yaml with Ray's own config validation as `ray up` runs it, k8s/ rendered with kustomize and
validated against the KubeRay CRD schemas and kubernetes-validate, and every job command the README,
cluster.yaml and the manifests write parsed with that job's own parser and config validation."""

from __future__ import annotations

import copy
import re
import tomllib
from functools import cache

import pytest
import yaml
from support import commands
from support.manifests import (
    ROOT,
    SCHEMAS,
    by_kind,
    have_kubectl,
    images,
    load,
    one,
    pod_specs,
    rayjob_errors,
    rayjob_spec_errors,
    render,
    resource_files,
    schedule_errors,
    schema_errors,
    security_errors,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
K8S = ROOT / "k8s"
OVERLAY = K8S / "overlays" / "example"
RAYCRONJOB = K8S / "overlays" / "raycronjob"  # the example with KubeRay's RayCronJob in place of the CronJob
KUSTOMIZATIONS = [K8S / "base", OVERLAY, RAYCRONJOB]
CLUSTER_YAML = ROOT / "cluster.yaml"
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
needs_kubectl = pytest.mark.skipif(not have_kubectl(), reason="kubectl not on PATH: k8s/ cannot be rendered")
needs_schemas = pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"no KubeRay CRD schemas at {SCHEMAS}")


def pinned(name: str) -> str:
    """The version pyproject.toml pins a dependency to (`name==X` or `name[extras]==X`)."""
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{name}(?:\[[^\]]*\])?==(\S+)", dep)
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned in pyproject.toml")


def cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@cache
def _overlay() -> tuple[dict, ...]:
    return tuple(render(OVERLAY))


def overlay() -> list[dict]:
    """k8s/overlays/example rendered (once a session; each caller gets its own copy)."""
    return copy.deepcopy(list(_overlay()))


# --- the image ---------------------------------------------------------------------------------------


def dockerfile() -> tuple[str, dict[str, str], list[tuple[str, str]]]:
    """The Dockerfile's FROM image with its ARG defaults resolved, the ARGs, and its instructions."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    instructions = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]
    args = {}
    for op, rest in instructions:
        if op == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    (base,) = [rest for op, rest in instructions if op == "FROM"]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base), args, instructions


def test_image_is_rays_gpu_image_of_the_pinned_ray_and_python():
    base, args, instructions = dockerfile()
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-(?P<cuda>cu\d+)", base)
    assert m, f"FROM {base}: not a rayproject/ray <ray>-py<XY>-cu<NNN> (GPU) image"
    assert m["ray"] == pinned("ray"), f"image has Ray {m['ray']}, pyproject.toml pins {pinned('ray')}"
    python = f"{m['py']}.{m['minor']}"
    assert PYPROJECT["project"]["requires-python"] == f">={python}", "the image's Python is not the project's"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py{m['py']}{m['minor']}"
    assert "ray-ml" not in (ROOT / "Dockerfile").read_text()  # no longer published
    # torch comes from the index of the image's CUDA, as pyproject.toml pins it
    run = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "https://download.pytorch.org/whl/${CUDA_TAG}" in run and base.endswith(args["CUDA_TAG"])
    assert "pyproject.toml" in run and "['dependencies']" in run, "the image does not install pyproject's pins"
    users = [rest for op, rest in instructions if op == "USER"]
    assert users and users[-1] == "ray", "the image must run as the base image's non-root user `ray`"
    (workdir,) = [rest for op, rest in instructions if op == "WORKDIR"]
    copies = [rest.split()[-2:] for op, rest in instructions if op == "COPY"]
    assert ["jobs", "./jobs"] in copies and ["lstmclf", "./lstmclf"] in copies, copies
    assert workdir == "/home/ray/lstmclf"


@needs_kubectl
def test_cluster_yaml_and_every_manifest_run_the_one_image():
    image = cluster_yaml()["docker"]["image"]
    assert not {"head_image", "worker_image"} & set(cluster_yaml()["docker"])
    assert not any("docker" in t for t in cluster_yaml()["available_node_types"].values())
    assert images(overlay()) == {image}, "k8s/overlays/example and cluster.yaml name different images"
    # The base names it only by the placeholder the overlay's image entry replaces.
    assert images(render(K8S / "base")) == {"lstmclf"}
    registry = image.split("/", 1)[0]
    logins = [c for c in cluster_yaml()["initialization_commands"] if "docker login" in c]
    assert all(c.endswith(registry) for c in logins), "the ECR login is for another registry than the image's"


# --- cluster.yaml --------------------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_validation_as_ray_up_runs_it():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = cluster_yaml()
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    for key in COMMAND_LISTS:  # written out, so none is filled from Ray's AWS defaults
        assert key in raw, f"cluster.yaml omits {key}: Ray would fill it from its AWS defaults"
        assert prepared[key] == raw[key]
    commands_run = [c for key in COMMAND_LISTS for c in prepared[key]]
    assert not any("pip install" in c for c in commands_run), "the image holds everything; nothing is installed"


def test_cluster_yaml_is_token_authenticated_and_keeps_the_dashboard_private():
    cfg = cluster_yaml()
    run_options = " ".join(cfg["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in run_options, "token authentication is not on in every container"
    assert cfg["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}  # the token, to every node
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert "0.0.0.0" not in starts and "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert "--include-dashboard=false" not in starts  # Train needs the dashboard's state API
    assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)", CLUSTER_YAML.read_text())
    for name, node in cfg["available_node_types"].items():
        assert node["node_config"]["IamInstanceProfile"]["Arn"], f"{name}: no instance profile for S3"
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", node["node_config"]["ImageId"]), f"{name}: AMI not pinned"


def test_cluster_yaml_has_a_cpu_head_and_gpu_workers_from_zero():
    cfg = cluster_yaml()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and "InstanceMarketOptions" not in head["node_config"]
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) > 0]
    assert len(gpu) == 1, "expected one GPU worker group"
    assert gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1 and cfg["max_workers"] >= gpu[0]["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0
    for node in types.values():  # Ray's schema takes floats; the autoscaler's bin packing wants integers
        assert all(isinstance(v, int) for v in node["resources"].values()), node["resources"]


# --- k8s/ ----------------------------------------------------------------------------------------------


def manifests_of(kustomization) -> list[dict]:
    """The kustomization rendered, or, without kubectl, the files it lists, one by one."""
    if have_kubectl():
        return render(kustomization)
    return [o for f in resource_files(kustomization) for o in load(f)]


@needs_schemas
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_validates(kustomization):
    objs = manifests_of(kustomization)
    assert {"RayCluster", "RayJob", "ServiceAccount", "Role", "RoleBinding"} <= {o["kind"] for o in objs}
    errors = [e for o in objs for e in schema_errors(o)]
    assert not errors, "\n".join(errors)


@needs_schemas
def test_the_validators_reject_what_kubernetes_would():
    """A typo'd field, a wrong type and an unknown field of a core kind: the checks above can fail."""
    rc = copy.deepcopy(next(o for o in load(K8S / "base" / "raycluster.yaml")))
    rc["spec"]["enableInTreeAutoscalng"] = True
    rc["spec"]["workerGroupSpecs"][0]["minReplicas"] = "0"
    assert len(schema_errors(rc)) == 2, schema_errors(rc)
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "automount": False}
    assert schema_errors(sa)


def test_s3_secret_example_validates_and_holds_placeholders_only():
    (secret,) = load(K8S / "base" / "s3-credentials.example.yaml")
    assert not schema_errors(secret)
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())
    for path in [*K8S.rglob("*.yaml"), CLUSTER_YAML, ROOT / "Dockerfile"]:  # no AWS access key ID anywhere
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", path.read_text()), path


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pod_is_unprivileged_and_bounded(kustomization):
    objs = manifests_of(kustomization)
    pods = [p for o in objs for p in pod_specs(o)]
    assert len(pods) >= (5 if have_kubectl() else 3)  # head, GPU group, submitter (+ the RayJob's own cluster)
    errors = [e for o in objs for e in security_errors(o)]
    assert not errors, "\n".join(errors)
    broken = copy.deepcopy(by_kind(objs, "RayCluster")[0])
    del broken["spec"]["autoscalerOptions"]["securityContext"]["capabilities"]
    broken["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"].pop("limits")
    assert len(security_errors(broken)) == 3  # ...and the check sees a missing setting


@needs_kubectl
def test_ray_clusters_autoscale_gpu_workers_from_zero_with_token_auth():
    objs = overlay()
    job = one(objs, "RayJob")
    specs = {"RayCluster": one(objs, "RayCluster")["spec"], "RayJob's cluster": job["spec"]["rayClusterSpec"]}
    assert specs["RayCluster"] == specs["RayJob's cluster"]
    for name, spec in specs.items():
        assert spec["authOptions"] == {"mode": "token"}, name
        assert spec["rayVersion"] == pinned("ray")  # authOptions needs Ray >= 2.52
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP" and not spec["headGroupSpec"].get("enableIngress")
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in head["limits"], "the head is a CPU node"
        (gpu,) = spec["workerGroupSpecs"]
        assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1 and gpu.get("replicas", 0) == 0
        assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    services = by_kind(objs, "Service")
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    assert not by_kind(objs, "Ingress")


@needs_kubectl
def test_rayjob_is_bounded_and_cleans_up_after_itself():
    job = one(overlay(), "RayJob")
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    assert not rayjob_errors(job), rayjob_errors(job)
    rules = {
        (r["policy"], r["condition"].get("jobStatus") or f"deployment {r['condition'].get('jobDeploymentStatus')}")
        for r in spec["deletionStrategy"]["deletionRules"]
    }
    # The GPUs go back and the RayJob object goes too, whether the job succeeded, failed or ran out of time.
    for status in ("SUCCEEDED", "FAILED", "deployment Failed"):
        assert {("DeleteCluster", status), ("DeleteSelf", status)} <= rules, status
    # KubeRay refuses the legacy fields beside deletionRules: the check above would say so.
    legacy = copy.deepcopy(job)
    legacy["spec"] |= {"shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 60}
    assert rayjob_errors(legacy) == ["shutdownAfterJobFinishes and deletionRules are mutually exclusive"]


@needs_kubectl
def test_service_account_has_least_rbac():
    objs = overlay()
    (role,) = by_kind(objs, "Role")
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # Exactly what Ray's autoscaler uses (and KubeRay grants it): no secrets, no writes to pods, no wildcards.
    assert granted == {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("ray.io", "rayclusters", "get"),
        ("ray.io", "rayclusters", "patch"),
    }
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lstmclf"}]
    for obj in by_kind(objs, "RayCluster") + by_kind(objs, "RayJob") + by_kind(objs, "CronJob"):
        for path, pod in pod_specs(obj):
            if path.endswith("headGroupSpec.template.spec"):  # the autoscaler sidecar's token
                assert pod["serviceAccountName"] == "lstmclf" and pod.get("automountServiceAccountToken", True)
            else:
                assert pod.get("automountServiceAccountToken") is False, f"{path} mounts an API token"


@needs_kubectl
def test_every_volume_and_env_source_the_pods_name_is_rendered():
    objs = overlay()
    configmaps = {o["metadata"]["name"]: o for o in by_kind(objs, "ConfigMap")}
    for obj in objs:
        for path, pod in pod_specs(obj):
            for vol in pod.get("volumes", []):
                if "configMap" in vol:
                    assert vol["configMap"]["name"] in configmaps, f"{path}: no ConfigMap {vol['configMap']}"
            for c in pod["containers"]:
                for source in c.get("envFrom", []):
                    ref = source.get("secretRef") or source.get("configMapRef")
                    assert ref.get("optional") or ref["name"] in configmaps, f"{path}: {ref}"
    assert yaml.safe_load(configmaps["lstmclf-recipe"]["data"]["tune.yaml"])["storage"]["path"].startswith("s3://")


# --- the commands --------------------------------------------------------------------------------------


def mounted_files(objs: list[dict], tmp_path) -> dict:
    """Container path -> a local copy, for every ConfigMap key mounted into a pod."""
    configmaps = {o["metadata"]["name"]: o for o in by_kind(objs, "ConfigMap")}
    files = {}
    for obj in objs:
        for _, pod in pod_specs(obj):
            volumes = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
            for c in pod["containers"]:
                for mount in c.get("volumeMounts", []):
                    for key, value in configmaps.get(volumes.get(mount["name"]), {}).get("data", {}).items():
                        local = tmp_path / mount["name"] / key
                        local.parent.mkdir(exist_ok=True)
                        local.write_text(value)
                        files[f"{mount['mountPath']}/{key}"] = local
    return files


def written_commands() -> list[commands.Command]:
    found = commands.in_markdown(ROOT / "README.md") + commands.in_strings(cluster_yaml(), "cluster.yaml")
    for path in sorted((ROOT / "docs").glob("*.md")):
        found += commands.in_markdown(path)
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load(path):
            found += commands.in_strings(doc, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("command", written_commands(), ids=lambda c: f"{c.source}:{c.job}")
def test_every_written_command_parses_and_its_config_validates(command, tmp_path):
    """A stale flag or config key anywhere a command is written fails here, not on a cluster."""
    mounted = any(arg.startswith("/home/ray/") for arg in command.args)
    if mounted and not have_kubectl():
        pytest.skip("kubectl not on PATH: the ConfigMap this command reads cannot be rendered")
    commands.validate(command, mounted_files(overlay(), tmp_path) if mounted else {})


def test_commands_are_found_where_they_are_written():
    found = written_commands()
    sources = {c.source for c in found}
    assert {"README.md", "k8s/base/rayjob.yaml", "k8s/base/retrain-cronjob.yaml"} <= sources
    (scheduled,) = [c for c in found if c.source == "k8s/base/retrain-cronjob.yaml"]  # a container's argv
    assert scheduled.job == "retrain" and scheduled.args[-2:] == ("--slot", "$(SLOT)")
    (alternative,) = [c for c in found if c.source == "k8s/overlays/raycronjob/raycronjob.yaml"]
    assert alternative.job == "retrain" and "--slot" not in alternative.args
    assert {"retrain", "registry"} <= {c.job for c in found if c.source == "README.md"}
    entry = next(c for c in found if c.source == "k8s/base/rayjob.yaml")
    assert entry.job == "tune" and entry.args == ("--config", "/home/ray/recipe/tune.yaml")
    _, _, instructions = dockerfile()
    (workdir,) = [rest for op, rest in instructions if op == "WORKDIR"]
    assert f"python {workdir}/jobs/tune.py" in entry.text  # the image's copy of jobs/
    stale = commands.Command("test", "tune", ("--max-epoch", "2", "--workers-per-trail", "2"), "")
    with pytest.raises(AssertionError, match="unrecognized arguments: --workers-per-trail"):
        commands.validate(stale)
    with pytest.raises(Exception, match=r"unknown config key 'tune\.max_concurent'"):
        commands.validate(commands.Command("test", "tune", ("--set", "tune.max_concurent=4"), ""))


# --- scheduled retraining -----------------------------------------------------------------------------


def retrain_container(cronjob: dict) -> dict:
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


@needs_kubectl
def test_the_cronjob_runs_each_schedule_once_as_one_slot_on_the_long_lived_cluster(tmp_path):
    objs = overlay()
    cronjob, cluster = one(objs, "CronJob"), one(objs, "RayCluster")
    spec, job = cronjob["spec"], cronjob["spec"]["jobTemplate"]["spec"]
    assert not schedule_errors(spec["schedule"], spec.get("timeZone")), schedule_errors(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 1  # a retry resumes the same slot
    # Kubernetes names a CronJob's Jobs <name>-<scheduled minutes> (11 characters) within 63.
    assert len(cronjob["metadata"]["name"]) <= 52

    container = retrain_container(cronjob)
    env = {e["name"]: e for e in container["env"]}
    assert env["SLOT"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The Ray token KubeRay made for the cluster (Secret named after it), and the mode that sends it.
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": cluster["metadata"]["name"],
        "key": "auth_token",
    }
    argv = container["command"]
    assert argv[:3] == ["ray", "job", "submit"] and argv[argv.index("--") + 1] == "python"
    assert f"--address=http://{cluster['metadata']['name']}-head-svc:8265" in argv  # KubeRay's head Service
    assert "--submission-id=$(POD_NAME)" in argv  # every attempt submits anew: Ray refuses a used id

    # The command, with the slot a scheduled Job would give it, through jobs/retrain.py's own checks.
    (command,) = commands.in_argv(argv, "cronjob")
    slot = f"{cronjob['metadata']['name']}-{29412345}"
    args = tuple(slot if a == "$(SLOT)" else a for a in command.args)
    parsed = commands.validate(commands.Command("cronjob", "retrain", args, ""), mounted_files(objs, tmp_path))
    assert parsed.slot == slot and parsed.config.endswith("/recipe/retrain.yaml")  # the ConfigMap on the head
    bad = tuple("a/b" if a == slot else a for a in args)
    with pytest.raises(Exception, match="slot 'a/b' must be letters"):
        commands.validate(commands.Command("cronjob", "retrain", bad, ""), mounted_files(objs, tmp_path))


@needs_kubectl
@needs_schemas
def test_the_raycronjob_alternative_validates_the_same_way():
    objs = render(RAYCRONJOB)
    assert not by_kind(objs, "CronJob"), "the RayCronJob replaces the CronJob: both would retrain"
    raycronjob, cluster = one(objs, "RayCronJob"), one(objs, "RayCluster")
    assert not schema_errors(raycronjob)
    spec = raycronjob["spec"]
    assert not schedule_errors(spec["schedule"], spec.get("timeZone"))
    assert spec["schedule"] == one(overlay(), "CronJob")["spec"]["schedule"]
    template = spec["jobTemplate"]
    assert not rayjob_spec_errors(template), rayjob_spec_errors(template)
    assert template["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert images(objs) == images(overlay())
    # ... and the checks see what KubeRay and Kubernetes would refuse.
    broken = copy.deepcopy(template)
    broken["deletionStrategy"]["deletionRules"][0]["policy"] = "DeleteCluster"  # not ours to delete
    del broken["clusterSelector"]
    assert rayjob_spec_errors(broken) == ["one of rayClusterSpec and clusterSelector must be set"]
    broken["clusterSelector"] = {"ray.io/cluster": "lstmclf"}
    assert rayjob_spec_errors(broken) == ["deletionRules[0]: DeleteCluster is not supported with clusterSelector"]
    assert schedule_errors("0 3 * * *", "Etc/UTC") == [] and schedule_errors("@daily") == []
    assert len(schedule_errors("0 24 * * *", "Mars/Olympus")) == 2
    assert schedule_errors("CRON_TZ=UTC 0 3 * * *") and schedule_errors("0 3 * *") and schedule_errors("*/0 3 * * *")
