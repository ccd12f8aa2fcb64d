"""Kubernetes manifests (infra/k8s) and the compiled pipeline's Kubernetes settings, checked offline: every
manifest against the Kubernetes JSON schemas (kubernetes-validate ships them), every overlay rendered with
`kubectl kustomize`, and what the services, probes, volumes and GPU placement must agree on."""

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import yaml
from test_serving import NOW, offline_logits, world  # noqa: F401  (world: a Feast repo and stored models)

from longrec.pipeline.local import compile_pipeline
from longrec.serving.process import free_port
from pipelines import training_pipeline as tp

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "gpu")
# The oldest Kubernetes release the manifests are meant for (schemas ship with kubernetes-validate).
K8S_VERSION = "1.30.0"
NOT_MANIFESTS = {"kustomization.yaml", "feature_store.yaml"}  # kustomize input and a Feast config


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name not in NOT_MANIFESTS)


def validate(document: dict) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


class KubeLoader(yaml.SafeLoader):
    """YAML as Kubernetes reads it: no YAML 1.1 timestamps (kustomize prints `1900-01-01T00:00:00` bare,
    and the API server takes it as the string it is)."""


KubeLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: overlays cannot be rendered (kubectl kustomize)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.load_all(result.stdout, Loader=KubeLoader) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def find(documents: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


# --- schemas -----------------------------------------------------------------------------------------


def test_validator_ships_its_schemas_and_rejects_bad_manifests():
    """Offline: the schemas are inside the package; a wrong type and an unknown field are both errors."""
    assert kubernetes_validate.utils.latest_version()  # no download: read from the package's schema folder
    deployment = next(yaml.safe_load_all((K8S / "base" / "ranker.yaml").read_text()))
    assert deployment["kind"] == "Deployment"
    validate(deployment)
    bad = copy.deepcopy(deployment)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(unknown)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path):
    documents = [d for d in yaml.load_all(path.read_text(), Loader=KubeLoader) if d]
    assert documents
    for document in documents:
        validate(document)


def test_every_rendered_manifest_validates(rendered):
    overlay, documents = rendered
    namespaces = {d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"}
    assert len(namespaces) == 1
    for document in documents:
        validate(document)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] in namespaces, document["metadata"]["name"]


def test_images_are_pinned(rendered):
    _, documents = rendered
    for document in documents:
        spec = document.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template", {}
        ).get("spec")
        for item in (pod or {}).get("containers", []):
            name, _, tag = item["image"].rpartition(":")
            assert name and tag and tag != "latest", item["image"]


# --- the online service --------------------------------------------------------------------------------


def shard_services() -> list[str]:
    """Shard service names as serving/service.py names them, for the default shard count."""
    from longrec.serving.config import DEFAULT_SHARDS

    source = (ROOT / "serving" / "service.py").read_text()
    assert 'name=f"MemoryShard{index}"' in source
    return [f"MemoryShard{i}" for i in range(DEFAULT_SHARDS)]


def test_services_select_their_pods_and_probe_the_health_routes(rendered):
    _, documents = rendered
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    served = ["longrec-ranker"] + [f"longrec-memory-shard-{i}" for i in range(len(shard_services()))]
    for name in served:
        deployment = deployments[name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        service = find(documents, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        item = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in item["ports"]}
        assert service["spec"]["ports"][0]["targetPort"] in ports
        # BentoML's health routes: /readyz answers 503 until __is_ready__ passes, /healthz while alive.
        assert item["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert item["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert item["startupProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert item[probe]["httpGet"]["port"] in ports
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= item["resources"][kind].keys(), (name, kind)


def test_ranker_reaches_each_memory_shard_through_its_service(rendered):
    _, documents = rendered
    ranker = container(find(documents, "Deployment", "longrec-ranker"))
    args = ranker["args"]
    assert args[0] == "start-http-server" and "--service-name" not in args
    depends = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--depends")
    assert list(depends) == shard_services()
    for index, name in enumerate(shard_services()):
        url = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", depends[name])
        assert url, depends[name]
        service = find(documents, "Service", url.group(1))
        assert int(url.group(2)) == service["spec"]["ports"][0]["port"]
        shard = container(find(documents, "Deployment", f"longrec-memory-shard-{index}"))
        assert shard["args"][:3] == ["start-http-server", "--service-name", name]


def test_ranker_autoscales_and_reads_feast_from_redis(rendered):
    _, documents = rendered
    hpa = find(documents, "HorizontalPodAutoscaler", "longrec-ranker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "longrec-ranker",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    ranker = find(documents, "Deployment", "longrec-ranker")
    env = {e["name"]: e["value"] for e in container(ranker)["env"]}
    redis = find(documents, "Service", "longrec-redis")
    assert env["REDIS_CONNECTION_STRING"] == f"longrec-redis:{redis['spec']['ports'][0]['port']}"
    config_map = next(
        d for d in documents if d["kind"] == "ConfigMap" and "longrec-feast-config" in d["metadata"]["name"]
    )
    volumes = {v["name"]: v for v in ranker["spec"]["template"]["spec"]["volumes"]}
    assert volumes["feast-config"]["configMap"]["name"] == config_map["metadata"]["name"]  # hashed name
    mounts = {m["name"]: m["mountPath"] for m in container(ranker)["volumeMounts"]}
    assert env["LONGREC_FEATURE_STORE_YAML"] == f"{mounts['feast-config']}/feature_store.yaml"
    feast = yaml.safe_load(config_map["data"]["feature_store.yaml"])
    assert Path(feast["registry"]).parent == Path(mounts["feast-data"])
    # The compiled scoring graph is cached on a pod volume: a restarted container does not compile again.
    assert "emptyDir" in volumes["compile-cache"]
    assert Path(env["TORCHINDUCTOR_CACHE_DIR"]).is_relative_to(mounts["compile-cache"])


def test_services_stay_on_cpu_and_the_gpu_overlay_caps_train_gpus():
    """Serving scores on CPU (models load with map_location="cpu"), so no Deployment asks for a GPU or a
    GPU node; GPUs are the train tasks', capped per namespace by the gpu overlay's quota."""
    ranker_source = (ROOT / "longrec" / "serving" / "ranker.py").read_text()
    assert "load_checkpoint(model_dir" in ranker_source and "cuda" not in ranker_source
    for overlay in OVERLAYS:
        documents = render(overlay)
        for deployment in (d for d in documents if d["kind"] == "Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            resources = container(deployment)["resources"]
            assert not any("nvidia.com/gpu" in resources.get(kind, {}) for kind in ("requests", "limits"))
            assert "nodeSelector" not in spec and "tolerations" not in spec
        quotas = [d for d in documents if d["kind"] == "ResourceQuota"]
        if overlay == "gpu":
            (quota,) = quotas
            assert int(quota["spec"]["hard"]["requests.nvidia.com/gpu"]) >= tp.TRAIN_ACCELERATOR_LIMIT
        else:
            assert not quotas


# --- Feast, the registry volume, the pipeline's service account ------------------------------------------


def test_cluster_feast_config_matches_the_repo_redis_config():
    cluster = yaml.safe_load((K8S / "base" / "feature_store.yaml").read_text())
    repo = yaml.safe_load((ROOT / "feature_repo" / "feature_store.redis.yaml").read_text())
    for key in ("project", "provider", "entity_key_serialization_version"):
        assert cluster[key] == repo[key], key
    assert cluster["offline_store"]["type"] == repo["offline_store"]["type"]
    assert cluster["online_store"] == repo["online_store"]  # redis, ${REDIS_CONNECTION_STRING}
    assert Path(cluster["registry"]).is_absolute()


def test_materialization_cronjob_runs_the_export_and_feast(rendered):
    _, documents = rendered
    cronjob = find(documents, "CronJob", "longrec-feast-materialize")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (job,) = pod["containers"]
    script = job["args"][0]
    assert "python -m longrec.features.export" in script
    assert (ROOT / "longrec" / "features" / "export.py").is_file()
    assert 'feast -f "$FEAST_CONFIG" apply' in script and 'materialize "$MATERIALIZE_FROM" "$(date' in script
    mounts = {m["name"]: m["mountPath"] for m in job["volumeMounts"]}
    # The repo's sources read <feature_repo>/data: the volume is mounted exactly there in the image.
    assert (
        job["workingDir"] == "/opt/longrec/feature_repo"
        and mounts["feast-data"] == "/opt/longrec/feature_repo/data"
    )
    env = {e["name"]: e["value"] for e in job["env"]}
    assert env["FEAST_CONFIG"] == f"{mounts['feast-config']}/feature_store.yaml"
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    ranker = find(documents, "Deployment", "longrec-ranker")["spec"]["template"]["spec"]
    ranker_claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in ranker["volumes"]
    }
    assert claims["feast-data"] == ranker_claims["feast-data"] == "longrec-feast-data"
    find(documents, "PersistentVolumeClaim", "longrec-feast-data")


def test_registry_claim_and_pipeline_service_account(rendered):
    _, documents = rendered
    for name in (tp.REGISTRY_PVC, tp.DATA_PVC):  # the claims the compiled pipeline mounts
        claim = find(documents, "PersistentVolumeClaim", name)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    toolbox = [
        d for d in yaml.safe_load_all((K8S / "ops" / "toolbox.yaml").read_text()) if d["kind"] == "Pod"
    ][0]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in toolbox["spec"]["volumes"]}
    assert claims["registry"] == tp.REGISTRY_PVC
    from longrec.pipeline.submit import PIPELINE_SERVICE_ACCOUNT

    account = find(documents, "ServiceAccount", PIPELINE_SERVICE_ACCOUNT)
    binding = find(documents, "RoleBinding", PIPELINE_SERVICE_ACCOUNT)
    role = find(documents, "Role", binding["roleRef"]["name"])
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    granted = {
        (group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert {("argoproj.io", "workflowtaskresults"), ("", "pods"), ("", "persistentvolumeclaims")} <= granted
    assert not any(d["kind"].startswith("Cluster") for d in documents)  # nothing cluster-wide


# --- the compiled pipeline's Kubernetes settings (kfp-kubernetes) -------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    path = compile_pipeline(tmp_path_factory.mktemp("yaml") / "pipeline.yaml")
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_gpu_request_node_selector_and_toleration_on_train_tasks_only(compiled):
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        resources = executor["container"].get("resources", {})
        settings = platform.get(name, {})
        is_train = name == "exec-train-model"
        assert ("accelerator" in resources) == is_train, name
        assert ("nodeSelector" in settings) == is_train, name
        assert ("tolerations" in settings) == is_train, name
    train = platform["exec-train-model"]
    accelerator = executors["exec-train-model"]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert train["nodeSelector"]["labels"] == dict([tp.TRAIN_NODE_SELECTOR])
    assert train["tolerations"] == [tp.TRAIN_TOLERATION]
    assert executors["exec-train-model"]["container"]["image"] == tp.TRAIN_IMAGE


def test_registry_volume_on_the_tasks_that_touch_the_registry(compiled):
    spec, platform = compiled
    registry_tasks = {
        "exec-evaluate-models",
        "exec-gate-promotion",
        "exec-register-model",
        "exec-package-bento",
    }
    for name, executor in spec["deploymentSpec"]["executors"].items():
        mounts = [(m["constant"], m["mountPath"]) for m in platform.get(name, {}).get("pvcMount", [])]
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        if name == "exec-ingest-dataset":  # event files for `dataset`
            assert mounts == [(tp.DATA_PVC, tp.DATA_MOUNT_PATH)] and "LONGREC_REGISTRY" not in env
        elif name in registry_tasks:
            assert mounts == [(tp.REGISTRY_PVC, tp.REGISTRY_MOUNT_PATH)]
            assert (
                env["LONGREC_REGISTRY"] == tp.REGISTRY_MOUNT_PATH
            )  # the default registry when registry_dir=""
        else:
            assert not mounts and "LONGREC_REGISTRY" not in env, name
    assert registry_tasks <= spec["deploymentSpec"]["executors"].keys()


# --- the split topology the manifests deploy, run on loopback ---------------------------------------------


def container_args(overlay: str, name: str) -> list[str]:
    return container(find(render(overlay), "Deployment", name))["args"]


@pytest.mark.slow
def test_ranker_and_shards_as_separate_servers_with_the_manifests_args(world, tmp_path):  # noqa: F811
    """Each shard and the ranker started as their own `start-http-server` (the Bento image's entrypoint
    command) with the args of the manifests, ports and hosts rewritten for loopback: all become ready, the
    ranker starts no shard of its own and ranks through the shard servers."""
    import httpx

    from longrec.serving.package import REPO_ROOT, prepare_serving
    from longrec.serving.process import ServeProcess

    config = prepare_serving(world["root"] / "registry", world["tags"]["lmn"], 2, world["repo"])
    base = ServeProcess(world["root"] / "registry", 0, config=config)
    _, env = base.command()  # BENTOML_HOME, the serving config, PYTHONPATH
    ports = {name: free_port() for name in ["ranker", *shard_services()]}

    def loopback(args: list[str]) -> list[str]:
        args = [a.replace("0.0.0.0", "127.0.0.1") for a in args]
        args[args.index("--port") + 1] = str(ports["ranker"])
        for index, name in enumerate(shard_services()):
            args = [
                a.replace(f"http://longrec-memory-shard-{index}:3000", f"http://127.0.0.1:{ports[name]}")
                for a in args
            ]
        return args

    commands = {}
    for index, name in enumerate(shard_services()):
        args = loopback(container_args("dev", f"longrec-memory-shard-{index}"))
        args[args.index("--port") + 1] = str(ports[name])
        commands[name] = args
    commands["ranker"] = loopback(container_args("dev", "longrec-ranker"))
    processes = {}
    try:
        for name, args in commands.items():
            log = (tmp_path / f"{name}.log").open("wb")
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "bentoml_cli._internal.start", *args, "serving.service:Ranker"],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        for name, port in ports.items():
            while True:
                assert processes[name].poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()[-3000:]
                time.sleep(0.5)
        candidates = [5, 17, 3, 42, 59, 8, 23]
        body = {"user_id": 3, "candidate_items": candidates, "timestamp": NOW}
        response = httpx.post(f"http://127.0.0.1:{ports['ranker']}/rank", json=body, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert not (answer["unknown_user"] or answer["feature_fallback"] or answer["degraded_memory"])
        served = {item["item_id"]: item["logit"] for item in answer["items"]}
        expected = offline_logits(world, "lmn", 3, candidates)  # the shards' rows are the model's memory
        np.testing.assert_allclose([served[c] for c in candidates], expected, atol=1e-5, rtol=0)
        metrics = httpx.get(f"http://127.0.0.1:{ports['ranker']}/metrics", timeout=5).text
        assert re.search(r'longrec_memory_shard_latency_seconds_count\{shard="0"\} [1-9]', metrics), metrics[
            -2000:
        ]
        # The ranker's server runs one service: no MemoryShard worker of its own.
        children = subprocess.run(["ps", "-eo", "ppid=,args="], capture_output=True, text=True).stdout
        ranker_children = [
            line for line in children.splitlines() if line.split(None, 1)[0] == str(processes["ranker"].pid)
        ]
        assert not any("MemoryShard" in line for line in ranker_children), ranker_children
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.redis
def test_materialization_job_fills_redis_for_the_ranker(tmp_path):
    """The CronJob's script and env as written, on a copy of the image's feature repo, with the cluster Feast
    config (registry path moved under tmp) against a local redis-server; then the ranker's online read with
    that config and a repo folder holding nothing but the mounted volume, as in the ranker pod."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed (the Makefile installs it with apt-get)")
    import pandas as pd

    from longrec.data.datasets import load_dataset
    from longrec.serving.features import OnlineFeatures

    cronjob = next(
        d for d in yaml.safe_load_all((K8S / "base" / "feast.yaml").read_text()) if d["kind"] == "CronJob"
    )
    (job,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    image_repo = Path(job["workingDir"])  # /opt/longrec/feature_repo in the image
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (repo / "data").mkdir()
    config = (K8S / "base" / "feature_store.yaml").read_text().replace(str(image_repo), str(repo))
    (tmp_path / "feature_store.yaml").write_text(config)
    rows = [
        (user, 100 + (user * 7 + k) % 40, 1_000_000 + 60 * k + user) for user in (1, 2, 3) for k in range(12)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        tmp_path / "events.csv", index=False
    )

    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        env = {**os.environ, **{e["name"]: e["value"] for e in job["env"]}}
        env.update(
            LONGREC_DATASET=str(tmp_path / "events.csv"),
            FEAST_CONFIG=str(tmp_path / "feature_store.yaml"),
            REDIS_CONNECTION_STRING=f"localhost:{port}",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python and feast of this venv
            PYTHONPATH=str(ROOT),
        )
        done = subprocess.run(
            job["command"] + job["args"], cwd=repo, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        os.environ["REDIS_CONNECTION_STRING"] = env["REDIS_CONNECTION_STRING"]  # Feast expands it on load
        ranker_repo = tmp_path / "ranker" / "feature_repo"  # only the volume is mounted there in the ranker
        ranker_repo.mkdir(parents=True)
        online = OnlineFeatures(ranker_repo, n_items=200, fs_yaml_file=tmp_path / "feature_store.yaml")
        events = load_dataset(str(tmp_path / "events.csv")).events  # ids as the export wrote them
        length = int(env["LONGREC_MAX_HISTORY_LENGTH"])
        for user_id, mine in events.groupby("user_id"):
            user = online.user(int(user_id))
            assert user.found and not user.fallback
            newest = mine.sort_values("timestamp", kind="stable").tail(length)
            assert user.items.tolist() == newest["item_id"].tolist()
    finally:
        os.environ.pop("REDIS_CONNECTION_STRING", None)
        server.terminate()
        server.wait(timeout=10)
