"""The deployment files, checked offline (no container engine or cluster runs in CI):

- Kubernetes manifests against the bundled OpenAPI schemas of a pinned Kubernetes version
  (``kubernetes-validate``, strict: unknown fields are errors), plus the contracts between them
  (probes, HPA target, selectors, read-only registry mount, referenced ConfigMap/Secret);
- the compose file against the compose-spec JSON schema vendored by ``check-jsonschema``;
- Prometheus' scrape targets against the compose services and ports; Grafana's provisioning against
  its mounts; every dashboard query parsed as PromQL, and every ``benefits_*`` metric it reads
  defined in a runtime package (``service/``, ``stream/``, ``infra/``, ``features/``);
- every ``BENEFITS_*`` variable in ``deploy/`` is a Settings field, and the settings each deployment
  hands the service actually validate (``Settings()`` with ``environment=prod``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))

#: The oldest Kubernetes we support, and the newest the validator bundles.
K8S_VERSIONS = ("1.30.0", "1.37.0")
K8S_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")

#: Metrics the dashboard must show (issue 8): API latency by stage, degraded answers, candidates,
#: model version, events folded, dead letters, consumer lag, freshness.
REQUIRED_METRICS = {
    # issue 14: the alarms of an emptied store and of a recreated topic
    "benefits_store_state_lost",
    "benefits_stream_state_lost",
    "benefits_stream_offsets_backwards_total",
    "benefits_recommend_stage_seconds_bucket",
    "benefits_recommend_degraded_total",
    "benefits_recommend_candidates_bucket",
    "benefits_model_info",
    "benefits_stream_events_total",
    "benefits_stream_dead_letters_total",
    "benefits_stream_consumer_lag",
    "benefits_stream_freshness_seconds_bucket",
    # issue 18: the business row (stock, budget, claims and refusals per offer, pacing)
    "benefits_offer_inventory_left",
    "benefits_offer_budget_spent",
    "benefits_offer_budget_total",
    "benefits_offer_claims_total",
    "benefits_offer_pacing",
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p in K8S_FILES for d in _docs(p)}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


# -- Kubernetes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_manifest_is_valid(path: Path, version: str) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_validator_rejects_unknown_fields() -> None:
    """Negative control: a typo in a probe must fail, or the test above proves nothing."""
    doc = _all_k8s()[("Deployment", "benefits-api")]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S_FILES)


def test_k8s_api_contract() -> None:
    objs = _all_k8s()
    dep = objs[("Deployment", "benefits-api")]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert containers.keys() == {"api", "proxy"}
    c = containers["api"]
    labels = spec["template"]["metadata"]["labels"]

    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
    # Processes per pod: --workers N with N cores requested and limited (one process per core).
    assert c["args"][:2] == ["benefits", "serve"]
    workers = int(c["args"][c["args"].index("--workers") + 1]) if "--workers" in c["args"] else 1
    assert workers >= 2 and int(c["resources"]["limits"]["cpu"]) == workers
    assert int(c["resources"]["requests"]["cpu"]) == workers
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["api"]
    assert {"name": "BENEFITS_PORT", "value": str(port)} in c["env"]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)

    # The registry volume: the PVC, mounted read-only where the settings say the registry is.
    config = objs[("ConfigMap", "benefits-config")]["data"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == config["BENEFITS_REGISTRY_DIR"])
    assert mount["readOnly"] is True
    claim = vols[mount["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = objs[("PersistentVolumeClaim", claim["claimName"])]
    assert "ReadOnlyMany" in pvc["spec"]["accessModes"]

    hpa = objs[("HorizontalPodAutoscaler", "benefits-api")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "benefits-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])

    svc = objs[("Service", "benefits-api")]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    _check_buffering_proxy(objs, pod, containers["proxy"], port)
    pdb = objs[("PodDisruptionBudget", "benefits-api")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < spec["replicas"], "a PDB as large as the replicas blocks drains"


def _check_buffering_proxy(
    objs: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], proxy: dict[str, Any], api_port: int
) -> None:
    """The Service reaches the API only through the nginx sidecar, which buffers whole requests with
    bounded header and body read times (slow clients never hold API slots)."""
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]}["http"] == 8080
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in proxy["volumeMounts"] if m["mountPath"] == "/etc/nginx/benefits")
    conf_map = objs[("ConfigMap", vols[mount["name"]]["configMap"]["name"])]
    conf = conf_map["data"]["nginx.conf"]
    assert "/etc/nginx/benefits/nginx.conf" in proxy["args"]
    assert f"server 127.0.0.1:{api_port};" in conf and "listen 8080;" in conf
    assert "proxy_request_buffering on;" in conf
    for directive in ("client_header_timeout", "client_body_timeout"):
        m = re.search(rf"{directive} (\d+)s;", conf)
        assert m is not None and int(m.group(1)) <= 10, directive
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    if shutil.which("nginx"):
        _nginx_syntax_ok(conf)


def _nginx_syntax_ok(conf: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "nginx.conf"
        path.write_text(conf.replace("/tmp/", f"{d}/"))
        res = subprocess.run(["nginx", "-t", "-c", str(path)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr


def test_k8s_worker_contract() -> None:
    objs = _all_k8s()
    dep = objs[("Deployment", "benefits-worker")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert c["args"] == ["benefits", "worker"]
    metrics_port = int(next(e["value"] for e in c["env"] if e["name"] == "BENEFITS_WORKER_METRICS_PORT"))
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == metrics_port
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    partitions = int(objs[("ConfigMap", "benefits-config")]["data"]["BENEFITS_EVENTS_PARTITIONS"])
    assert dep["spec"]["replicas"] <= partitions, "workers beyond the partition count sit idle"
    pdb = objs[("PodDisruptionBudget", "benefits-worker")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_archiver_and_retraining_contract() -> None:
    objs = _all_k8s()
    arch = objs[("Deployment", "benefits-archiver")]
    pod = arch["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["benefits", "archive"]
    # One writer per archive directory, even during a rollout.
    assert arch["spec"]["replicas"] == 1 and arch["spec"]["strategy"]["type"] == "Recreate"
    archive_dir = next(e["value"] for e in c["env"] if e["name"] == "BENEFITS_ARCHIVE_DIR")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert mounts["archive"] == archive_dir and claims["archive"] == "benefits-archive"
    assert ("PersistentVolumeClaim", "benefits-archive") in objs
    config = objs[("ConfigMap", "benefits-config")]["data"]
    assert (
        config.get("BENEFITS_ARCHIVE_CONSUMER_GROUP", "benefits-archiver")
        != config["BENEFITS_CONSUMER_GROUP"]
    )
    cron = objs[("CronJob", "benefits-retrain")]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (t,) = job["containers"]
    assert t["args"][:2] == ["benefits", "train"]
    args = dict(zip(t["args"][2::2], t["args"][3::2], strict=False))
    tmounts = {m["mountPath"]: m["name"] for m in t["volumeMounts"]}
    vols = {v["name"]: v for v in job["volumes"]}
    assert vols[tmounts[args["--data"]]]["persistentVolumeClaim"]["claimName"] == "benefits-archive"
    assert vols[tmounts["/models"]]["persistentVolumeClaim"]["claimName"] == "benefits-registry"
    catalogue = args["--catalog"]
    cm = vols[tmounts[str(Path(catalogue).parent)]]["configMap"]["name"]
    data = objs[("ConfigMap", cm)]["data"][Path(catalogue).name]
    from features.taxonomy import parse_catalog

    taxonomy, _ = parse_catalog(json.loads(data))
    assert taxonomy.categories


def test_k8s_references_resolve_and_secrets_are_fake() -> None:
    objs = _all_k8s()
    for kind, name in [("Deployment", "benefits-api"), ("Deployment", "benefits-worker")]:
        for c in objs[(kind, name)]["spec"]["template"]["spec"]["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in objs
                if "secretRef" in src:
                    assert ("Secret", src["secretRef"]["name"]) in objs
    secret = objs[("Secret", "benefits-secrets")]
    assert "data" not in secret, "example secrets in stringData only, readable as fake"
    assert all("FAKE" in v for v in secret["stringData"].values())
    config = objs[("ConfigMap", "benefits-config")]["data"]
    secret_names = {"BENEFITS_STOREFRONT_API_KEYS", "BENEFITS_ADMIN_API_KEYS", "BENEFITS_MEMBER_HASH_SALT"}
    assert not secret_names & config.keys(), "secrets belong in the Secret, not the ConfigMap"


# -- docker compose -------------------------------------------------------------------------------------


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_matches_compose_spec() -> None:
    res = _check_jsonschema(COMPOSE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_schema_check_rejects_a_typo(tmp_path: Path) -> None:
    """Negative control for the schema check."""
    data = _compose()
    data["services"]["api"]["deploy"]["replicass"] = 2
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(data))
    assert _check_jsonschema(bad).returncode != 0


def test_compose_stack_contract() -> None:
    services = _compose()["services"]
    assert {
        "redpanda",
        "redis",
        "topic-init",
        "worker",
        "api",
        "lb",
        "prometheus",
        "grafana",
    } <= services.keys()
    assert services["api"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] >= 1
    for role in ("api", "worker"):
        deps = services[role]["depends_on"]
        assert deps["topic-init"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "models:/models:ro" in services["api"]["volumes"]
    # Bind-mounted config files exist.
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), f"{src} is mounted but missing"
    # The topic the init job creates has the partition count the settings declare.
    env = services["api"]["environment"]
    topic_cmd = " ".join(services["topic-init"]["command"])
    assert f"{env['BENEFITS_EVENTS_TOPIC']}:{env['BENEFITS_EVENTS_PARTITIONS']}" in topic_cmd
    assert f"{env['BENEFITS_DEAD_LETTER_TOPIC']}:" in topic_cmd


def test_compose_secrets_come_from_dotenv() -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert {
        "BENEFITS_STOREFRONT_API_KEYS",
        "BENEFITS_ADMIN_API_KEYS",
        "BENEFITS_MEMBER_HASH_SALT",
    } <= required
    example = _dotenv(DEPLOY / ".env.example")
    assert required <= example.keys(), f"missing from .env.example: {sorted(required - example.keys())}"
    assert all("CHANGE-ME" in v for v in example.values())
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def _dotenv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _interpolate(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}", lambda m: env[m.group(1)], value)


# -- settings -------------------------------------------------------------------------------------------


def test_every_benefits_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    used: dict[str, set[str]] = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for name in re.findall(r"\bBENEFITS_[A-Z0-9_]+", path.read_text(errors="replace")):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert used, "no BENEFITS_ variables found: the scan is broken"
    unknown = {n: sorted(p) for n, p in used.items() if n.removeprefix("BENEFITS_").lower() not in fields}
    assert not unknown, f"not Settings fields (Settings has extra='forbid'): {unknown}"


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for key in list(os.environ):
        if key.startswith("BENEFITS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize("role", ["api", "worker", "model-init"])
def test_compose_settings_validate(role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = _dotenv(DEPLOY / ".env.example")
    env = {k: _interpolate(str(v), dotenv) for k, v in _compose()["services"][role]["environment"].items()}
    settings = _settings_from({k: v for k, v in env.items() if k.startswith("BENEFITS_")}, monkeypatch)
    assert settings.environment == "prod"
    assert settings.redis_url and settings.kafka_bootstrap


@pytest.mark.parametrize("deployment", ["benefits-api", "benefits-worker", "benefits-archiver"])
def test_k8s_settings_validate(deployment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = _all_k8s()
    # The API pod's other container is its nginx proxy, which reads no settings.
    (c,) = [
        c
        for c in objs[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
        if c["name"] != "proxy"
    ]
    env = {
        **objs[("ConfigMap", "benefits-config")]["data"],
        **objs[("Secret", "benefits-secrets")]["stringData"],
    }
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    settings = _settings_from(env, monkeypatch)
    assert settings.environment == "prod"
    assert settings.redis_cluster is True
    assert str(settings.registry_dir) == "/models"


# -- Prometheus and Grafana -----------------------------------------------------------------------------


def test_prometheus_scrapes_every_replica_of_api_and_worker() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = _compose()["services"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    expected = {
        "benefits-api": ("api", int(services["api"]["environment"]["BENEFITS_PORT"])),
        "benefits-worker": ("worker", int(services["worker"]["environment"]["BENEFITS_WORKER_METRICS_PORT"])),
    }
    for job, (service, port) in expected.items():
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A" and sd["port"] == port
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
        assert str(port) in [str(p) for p in services[service]["expose"]]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (optional)")
def test_promtool_accepts_the_config() -> None:
    res = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_grafana_provisioning_matches_mounts() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/benefits.yml").read_text())
    (provider,) = prov["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://prometheus:9090"
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == source["uid"], panel["title"]


def _queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((panel["title"], target["expr"]))
    return out


def _grafana_to_promql(expr: str) -> str:
    return re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)


def _metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(_grafana_to_promql(expr)), visit)
    return names


def test_dashboard_layout() -> None:
    assert DASHBOARDS, "no dashboard JSON"
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["title"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), "duplicate panel ids"
        for p in dash["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
            refs = [t["refId"] for t in p.get("targets", [])]
            assert len(refs) == len(set(refs)), p["title"]


@pytest.mark.parametrize(("title", "expr"), _queries(), ids=lambda v: v[:40] if isinstance(v, str) else v)
def test_dashboard_query_is_valid_promql(title: str, expr: str) -> None:
    assert _metric_names(expr), f"{title}: {expr} reads no metric"


def _defined_metrics() -> tuple[set[str], set[str]]:
    """(every ``benefits_*`` name in a string literal, the ones declared as Histogram) in the code."""
    names: set[str] = set()
    histograms: set[str] = set()
    for pkg in ("service", "stream", "infra", "features"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            names |= set(re.findall(r"""["'](benefits_[a-z0-9_]+)["']""", text))
            histograms |= set(re.findall(r"""Histogram\(\s*["'](benefits_[a-z0-9_]+)["']""", text))
    return names, histograms


def _dashboard_metrics() -> list[Any]:
    used = sorted({n for _, e in _queries() for n in _metric_names(e) if n.startswith("benefits_")})
    defined, _ = _defined_metrics()
    params = []
    for name in used:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        ok = name in defined or base in defined or name.removesuffix("_total") in defined
        marks = (
            ()
            if ok
            else (pytest.mark.xfail(strict=False, reason=f"{name} not (yet) defined by a runtime package"),)
        )
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _dashboard_metrics())
def test_dashboard_metric_is_defined_in_code(name: str) -> None:
    defined, histograms = _defined_metrics()
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    assert name in defined or base in defined or name.removesuffix("_total") in defined
    if name.endswith("_bucket"):
        assert base in histograms, f"{name}: histogram_quantile needs {base} to be a Histogram"


def test_dashboard_covers_the_required_metrics() -> None:
    used = {n for _, e in _queries() for n in _metric_names(e)}
    assert not REQUIRED_METRICS - used, f"dashboard misses {sorted(REQUIRED_METRICS - used)}"


def test_nginx_balances_over_the_api_service() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    port = _compose()["services"]["api"]["environment"]["BENEFITS_PORT"]
    assert re.search(rf"server\s+api:{port}\b", conf)
    assert "proxy_pass http://api;" in conf
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in _compose()["services"]["lb"]["volumes"]
    # The API cannot bound header read time itself (uvicorn has no such timeout): the balancer does.
    assert "proxy_request_buffering on;" in conf
    for directive in ("client_header_timeout", "client_body_timeout"):
        m = re.search(rf"{directive} (\d+)s;", conf)
        assert m is not None and int(m.group(1)) <= 10, directive


def test_workers_refuse_events_older_than_member_state_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployments bound event age (BENEFITS_WORKER_MAX_EVENT_AGE_SECONDS, unset by default for demos and
    backfills) to the member TTL, as the README says."""
    dotenv = _dotenv(DEPLOY / ".env.example")
    compose_env = {
        k: _interpolate(str(v), dotenv) for k, v in _compose()["services"]["worker"]["environment"].items()
    }
    objs = _all_k8s()
    (c,) = objs[("Deployment", "benefits-worker")]["spec"]["template"]["spec"]["containers"]
    k8s_env = {
        **objs[("ConfigMap", "benefits-config")]["data"],
        **objs[("Secret", "benefits-secrets")]["stringData"],
        **{e["name"]: e["value"] for e in c.get("env", [])},
    }
    for env in (compose_env, k8s_env):
        settings = _settings_from({k: v for k, v in env.items() if k.startswith("BENEFITS_")}, monkeypatch)
        assert settings.worker_max_event_age_seconds == settings.member_ttl_seconds


def test_every_role_mounts_the_one_catalogue_the_taxonomy_path_names() -> None:
    """The API, the worker, the archiver and the retraining job read the operator's taxonomy from the same
    ConfigMap (BENEFITS_TAXONOMY_PATH), and the job trains with that same file: a model's specification
    hash is the one serving computes, so an operator taxonomy does not get every new model refused."""
    objs = _all_k8s()
    config = objs[("ConfigMap", "benefits-config")]["data"]
    taxonomy = Path(config["BENEFITS_TAXONOMY_PATH"])
    cron = objs[("CronJob", "benefits-retrain")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pods = {
        name: objs[("Deployment", name)]["spec"]["template"]["spec"]
        for name in ("benefits-api", "benefits-worker", "benefits-archiver")
    } | {"benefits-retrain": cron}
    for name, pod in pods.items():
        container = pod["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(taxonomy.parent)]]
        assert volume["configMap"]["name"] == "benefits-catalogue", name
    (train,) = cron["containers"]
    args = dict(zip(train["args"][2::2], train["args"][3::2], strict=False))
    assert Path(args["--catalog"]) == taxonomy
    # Shipped empty for the operator to fill; training refuses an offer-less catalogue by name.
    data = json.loads(objs[("ConfigMap", "benefits-catalogue")]["data"][taxonomy.name])
    assert data["offers"] == [] and data["taxonomy"]["categories"]
