"""Checks of deploy/: Prometheus rules and their unit tests (promtool), that every YAML/JSON file parses,
that every metric the alerts and the dashboard use is exported by a real proxy and analyzer, and that the
command lines in the compose file, systemd units, Kubernetes manifests and Dockerfile are ones `fasterdata`
accepts, with settings files that load.

promtool comes with Debian's `prometheus` package; without it the promtool tests skip.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from fasterdata.cli import build_parser
from fasterdata.config.settings import COMMANDS, load
from tests.kit.metrics import http_get
from tests.kit.polling import wait_until
from tests.kit.ports import free_port, port_open
from tests.kit.processes import ProxyProcess
from tests.kit.services import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fasterdata.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: apt-get install prometheus (Debian ships promtool in it)")

# A metric name as PromQL writes it, limited to ours (recording rules may carry colons).
METRIC_TOKEN = re.compile(r"(?<![A-Za-z0-9_:\"'])[a-z_:]*fasterdata_[a-z0-9_:]*")
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "${datasource}": "",
                "$business_metric": "fasterdata_business_orders_placed", "$db": ".*", "$app": ".*"}


# ── helpers ──────────────────────────────────────────────────────────────────────────────────────

def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    """Run promtool; the test fails with its output when it does."""
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def yaml_docs(path: Path) -> list[Any]:
    """Every document of a (possibly multi-document) YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def deploy_files(*suffixes: str) -> list[Path]:
    """Files under deploy/ with one of the suffixes, sorted."""
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


def alert_rules() -> list[dict[str, Any]]:
    """The rules (alerting and recording) of deploy/prometheus/alerts.yml."""
    return [rule for group in yaml_docs(PROM / "alerts.yml")[0]["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets, annotations, variable queries."""
    d = dashboard()
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if t.get("expr")]
    exprs += [a["expr"] for a in d["annotations"]["list"] if a.get("expr")]
    exprs += [v["definition"] for v in d["templating"]["list"] if v.get("definition")]
    return exprs


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, so promtool can parse it."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The fasterdata metric names an expression uses (strings in label matchers excepted)."""
    return set(METRIC_TOKEN.findall(re.sub(r'"[^"]*"', '""', expr)))


def exported_names(text: str) -> set[str]:
    """Series names a /metrics page can produce: samples, and families even while they have no sample."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{s}" for s in ("_bucket", "_sum", "_count"))
            elif kind == "summary":
                names.update(f"{name}{s}" for s in ("_sum", "_count"))
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def parse_command(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse a `fasterdata …` argument list as the real CLI does; (command, settings given as flags)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"fasterdata rejects the command line {argv}") from exc
    model = COMMANDS[args.command]
    flags = {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
    return args.command, {"config": getattr(args, "config", None), **flags}


def check_command(argv: list[str], files: dict[str, str] | None = None,
                  environ: dict[str, str] | None = None) -> Any:
    """Parse argv and build its settings, mapping in-container config paths to files in the repository."""
    command, flags = parse_command(argv)
    config = flags.pop("config")
    if config is not None:
        assert files is not None and config in files, f"{argv}: --config {config} is not provided by the deployment"
        config = files[config]
    return load(command, config, flags, environ=environ or {})


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    """`fasterdata proxy --help`, `fasterdata analyze --help` and `fasterdata gl serve --help` (under "gl"),
    as operators read them."""
    out = {}
    for command in (["proxy"], ["analyze"], ["gl", "serve"]):
        done = subprocess.run([sys.executable, "-m", "fasterdata", *command, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        out[command[0]] = done.stdout
    return out


def assert_flags_documented(argv: list[str], help_texts: dict[str, str]) -> None:
    """Every --flag of the command line appears in that sub-command's --help."""
    for token in argv[1:]:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_texts[argv[0]]), \
                f"{flag} is not in `fasterdata {argv[0]} --help`"


# ── (a) promtool ─────────────────────────────────────────────────────────────────────────────────

@needs_promtool
def test_promtool_check_config() -> None:
    """`promtool check config` accepts prometheus.yml and the rule file it names."""
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in out.stdout + out.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    """`promtool check rules` accepts alerts.yml."""
    out = promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in out.stdout + out.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    """The alert unit tests (alerts_test.yml) pass."""
    out = promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out.stdout + out.stderr


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_silent() -> None:
    """Each alert is tested both ways, and carries a severity and a summary."""
    tests = yaml_docs(PROM / "alerts_test.yml")[0]["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts never shown to fire"
    assert alerts - silent == set(), "alerts never shown to stay silent"
    for rule in alert_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"].get("summary"), rule["alert"]


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each dashboard expression, variables substituted, loaded as a recording rule by promtool."""
    rules = [{"record": f"dashboard:check_{i}", "expr": grafana_to_promql(expr)}
             for i, expr in enumerate(dashboard_exprs())
             if not expr.startswith(("label_values(", "metrics("))]
    assert len(rules) > 20
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path), cwd=tmp_path)


# ── (b) every file parses and references what exists ────────────────────────────────────────────

@pytest.mark.parametrize("path", deploy_files(".yml", ".yaml"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    """Every YAML file under deploy/ parses."""
    assert yaml_docs(path), f"{path} is empty"


@pytest.mark.parametrize("path", deploy_files(".json"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    """Every JSON file under deploy/ parses."""
    assert json.loads(path.read_text())


def compose() -> dict[str, Any]:
    """deploy/docker-compose.yml."""
    return yaml_docs(DEPLOY / "docker-compose.yml")[0]


def compose_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → repository path of a service's bind mounts (./ sources)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (DEPLOY / source).resolve()
    return out


def test_compose_services_and_files() -> None:
    """The compose file has every service, and mounts and builds only files that exist."""
    services = compose()["services"]
    assert set(services) >= {"postgres", "redis", "proxy", "analyzer", "glcache", "prometheus", "grafana"}
    for name, service in services.items():
        for target, source in compose_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        if "build" in service:
            build = service["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), f"{name}: Dockerfile missing"
    prometheus = compose_mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROM / "prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == PROM / "alerts.yml"
    grafana = compose_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    provider = yaml_docs(DEPLOY / "grafana/provisioning/dashboards/fasterdata.yml")[0]["providers"][0]
    assert grafana[provider["options"]["path"]] == DASHBOARD.parent, "dashboard provider path is not mounted"
    datasource = yaml_docs(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


def test_docker_compose_config() -> None:
    """`docker compose config` (or docker-compose v1) validates the file without a Docker engine."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            continue
        done = subprocess.run([*cmd, "-f", "docker-compose.yml", "config", "-q"], cwd=DEPLOY,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (Debian: docker-compose)")


def test_dockerfile() -> None:
    """python:3.11-slim, a non-root user, entrypoint `fasterdata`, and sources that exist."""
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["fasterdata"]' in lines
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_grafana_dashboard_structure() -> None:
    """Unique panel ids, the datasource variable everywhere, known variables, every topic covered."""
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in d["templating"]["list"]}
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var.startswith("__") or var in variables, f"{panel['title']}: unknown variable ${var}"
    titles = " ".join(p["title"].lower() for p in dashboard_panels())
    for topic in ("statement rate", "latency", "sqlstate", "business", "security", "alerts", "redis", "spool",
                  "lag"):
        assert topic in titles, f"no panel about {topic}"
    exprs = " ".join(dashboard_exprs())
    assert "histogram_quantile" in exprs and "fasterdata_proxy_statement_duration_seconds_bucket" in exprs


KUBE_KINDS = {("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"),
              ("monitoring.coreos.com/v1", "ServiceMonitor"), ("kustomize.config.k8s.io/v1beta1", "Kustomization")}


def kube_objects() -> list[dict[str, Any]]:
    """Every object of deploy/kubernetes (the kustomization excepted)."""
    docs = [doc for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for doc in yaml_docs(path)]
    return [doc for doc in docs if doc["kind"] != "Kustomization"]


def test_kubernetes_manifests() -> None:
    """Right apiVersion/kind, and selectors, ports, probes and volumes that line up."""
    for path in sorted((DEPLOY / "kubernetes").glob("*.y*ml")):
        for doc in yaml_docs(path):
            assert (doc.get("apiVersion"), doc.get("kind")) in KUBE_KINDS, f"{path.name}: {doc.get('kind')}"
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path.name
    kustomization = yaml_docs(DEPLOY / "kubernetes" / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / resource).is_file(), resource
    objects = kube_objects()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    assert set(by_kind["ConfigMap"]) == {"fasterdata-config"}
    components = ("fasterdata-proxy", "fasterdata-analyzer", "fasterdata-glcache")
    for name in components:
        deployment, service, monitor = (by_kind[k][name] for k in ("Deployment", "Service", "ServiceMonitor"))
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), f"{name}: Deployment selector misses its pods"
        assert service["spec"]["selector"].items() <= pod_labels.items(), f"{name}: Service selects no pod"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), \
            f"{name}: ServiceMonitor selects no Service"
        for other in components:
            other_pods = by_kind["Deployment"][other]["spec"]["template"]["metadata"]["labels"]
            if other != name:
                assert not service["spec"]["selector"].items() <= other_pods.items(), f"{name}: selects {other}"
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports, f"{name}: ServiceMonitor port {endpoint['port']}"
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{name}: Service targets a port the container lacks"
            for probe in ("readinessProbe", "livenessProbe"):
                action = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                assert action["port"] in ports, f"{name}: {probe} port"
            for mount in container["volumeMounts"]:
                assert mount["name"] in volumes, f"{name}: volume {mount['name']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True


# ── (c) every metric the alerts and the dashboard use is exported ────────────────────────────────

def used_metric_names() -> dict[str, set[str]]:
    """Metric name → where it is used (alert rules, dashboard)."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alerts.yml {rule.get('alert') or rule.get('record')}")
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("dashboard")
    return used


def test_metric_name_extraction() -> None:
    """The helpers find metric names in PromQL and on a /metrics page."""
    assert metric_names('sum by (job) (rate(fasterdata_proxy_statements_total{app=~"fasterdata_x"}[5m]))') == {
        "fasterdata_proxy_statements_total"}
    assert metric_names("job:fasterdata_proxy_statement_error_ratio:rate5m > 0.05") == {
        "job:fasterdata_proxy_statement_error_ratio:rate5m"}
    assert exported_names("# TYPE a histogram\n# TYPE b_total counter\nc{x=\"1\"} 2\n") == {
        "a", "a_bucket", "a_sum", "a_count", "b_total", "c"}
    used = used_metric_names()
    assert {"fasterdata_sink_dropped_total", "fasterdata_analyzer_lag_seconds", "fasterdata_security_findings_total",
            "fasterdata_proxy_statement_duration_seconds_bucket"} <= set(used)


def delete_prefix(prefix: str) -> None:
    """Remove every Redis key under prefix: (the proxy's streams and the analyzer's state)."""
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


class Analyzers:
    """`fasterdata analyze` processes started by a test, the way operators run them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []

    def __call__(self, prefix: str) -> tuple[int, subprocess.Popen[bytes], Path]:
        """Start one for prefix → (metrics port, process, log path)."""
        port = free_port()
        log_path = self.tmp / f"analyzer-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fasterdata", "analyze", "--metrics", f"127.0.0.1:{port}", "--prefix", prefix,
                 "--redis", REDIS_URL, "--consumer", f"deploy-test-{uuid.uuid4().hex[:6]}", "--block", "0.2"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.started.append(proc)
        return port, proc, log_path

    def stop_all(self) -> None:
        """SIGTERM every one still running (SIGKILL after 30 s)."""
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def analyzer(tmp_path: Path) -> Iterator[Analyzers]:
    """Factory of `fasterdata analyze` processes; all stopped at teardown."""
    analyzers = Analyzers(tmp_path)
    yield analyzers
    analyzers.stop_all()


def missing_metrics(exported: set[str], only: tuple[str, ...] = ("",)) -> dict[str, list[str]]:
    """Used metric names (starting with one of `only`) that nothing exports, with where they are used."""
    recorded = {rule["record"] for rule in alert_rules() if "record" in rule}
    business = {name for name in exported if name.startswith("fasterdata_business_")}
    missing = {}
    for name, where in sorted(used_metric_names().items()):
        if not name.startswith(only) or name in exported or name in recorded:
            continue
        if name.startswith("fasterdata_business_") and any(b.startswith(name) for b in business):
            continue  # business metrics are one family per rule: matched by prefix
        missing[name] = sorted(where)
    return missing


def test_alert_and_dashboard_metrics_are_exported(start_proxy: Callable[..., ProxyProcess],
                                                  analyzer: Analyzers) -> None:
    """Run statements through a real proxy into a real analyzer; every metric used must be on their /metrics."""
    proxy = start_proxy()
    try:
        with psycopg.connect(proxy.dsn(application_name="deploy-test"), autocommit=True) as conn:
            conn.execute("SELECT 1")
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM fasterdata_deploy_no_such_table")
        wait_until(lambda: "fasterdata_proxy_statement_errors_total{" in http_get(proxy.metrics_port, "/metrics")[1],
                   "the proxy to count the failed statement")
        status, proxy_text = http_get(proxy.metrics_port, "/metrics")
        assert status == 200
        exported = exported_names(proxy_text)
        assert "fasterdata_proxy_statement_duration_seconds_bucket" in exported
        missing = missing_metrics(exported, ("fasterdata_proxy_", "fasterdata_sink_"))
        assert not missing, f"proxy metrics used but not exported: {missing}"

        port, proc, log_path = analyzer(proxy.prefix)

        def processed() -> bool:
            """The analyzer has acknowledged stream entries (and has not died trying)."""
            assert proc.poll() is None, \
                f"`fasterdata analyze` exited {proc.returncode}:\n{log_path.read_text()[-2000:]}"
            status, text = http_get(port, "/metrics") if port_open(port) else (0, "")
            return status == 200 and re.search(r"^fasterdata_analyzer_entries_total [1-9]", text, re.M) is not None

        wait_until(processed, "the analyzer to process the proxy's statements", timeout=60)
        exported |= exported_names(http_get(port, "/metrics")[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, f"analyzer exited {proc.returncode} on SIGTERM:\n{log_path.read_text()[-2000:]}"
    finally:
        analyzer.stop_all()
        assert proxy.stop() == 0, f"proxy did not exit 0 on SIGTERM:\n{proxy.log()}"
        delete_prefix(proxy.prefix)  # after both stopped, so nothing writes a key again
    assert any(name.startswith("fasterdata_business_") for name in exported), "no fasterdata_business_<rule>"
    missing = missing_metrics(exported)
    assert not missing, f"metrics used but not exported: {missing}"


# ── (d) command lines, flags and settings files ──────────────────────────────────────────────────

def test_compose_command_lines(help_texts: dict[str, str]) -> None:
    """The proxy and analyzer commands parse, and their settings (with the mounted file) load."""
    services = compose()["services"]
    expected = {"proxy": ("0.0.0.0:9930", "0.0.0.0:6432"), "analyzer": ("0.0.0.0:9931", None)}
    for name, (metrics, listen) in expected.items():
        service = services[name]
        argv = service["command"]
        assert_flags_documented(argv, help_texts)
        files = {target: str(source) for target, source in compose_mounts(service).items()}
        settings = check_command(argv, files)
        assert settings.metrics == metrics
        if listen:
            assert settings.listen == listen
            assert settings.upstream.split(":")[0] == "postgres"
            assert settings.spool_dir and settings.spool_dir.startswith("/var/lib/fasterdata")
            grace = int(str(service["stop_grace_period"]).rstrip("s"))
            assert grace > settings.shutdown_grace, "stop_grace_period must exceed shutdown_grace"
        assert settings.redis.startswith("redis://redis:")
    published = {p.split(":")[-1] for p in services["proxy"]["ports"]}
    assert {"6432", "9930"} <= published


def test_compose_analyzer_reads_the_mounted_rules_file(help_texts: dict[str, str]) -> None:
    """The analyzer's --rules names a file the compose file mounts, and that file is a valid rules file."""
    from fasterdata.analyzers import rules

    service = compose()["services"]["analyzer"]
    mounts = compose_mounts(service)
    files = {target: str(source) for target, source in mounts.items()}
    settings = check_command(service["command"], files)
    assert settings.rules in mounts, f"--rules {settings.rules} is not mounted into the analyzer"
    assert mounts[settings.rules] == DEPLOY / "compose" / "rules.yaml"
    assert rules.load(mounts[settings.rules]).rules, "the mounted rules file has no business rules"


def test_compose_gl_serve(help_texts: dict[str, str]) -> None:
    """`gl serve` parses with the real CLI, loads the mounted file's `gl:` section, reads PostgreSQL
    directly with the password from the environment, and publishes Flight."""
    services = compose()["services"]
    service = services["glcache"]
    argv = service["command"]
    assert argv[:2] == ["gl", "serve"]
    assert_flags_documented(argv, help_texts)
    files = {target: str(source) for target, source in compose_mounts(service).items()}
    settings = check_command(argv, files)
    assert settings.flight == "0.0.0.0:8815" and settings.metrics == "0.0.0.0:9932"
    assert "host=postgres" in settings.dsn and "password" not in settings.dsn
    assert settings.redis.startswith("redis://redis:") and settings.follow is True
    assert service["environment"]["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert "8815:8815" in service["ports"]
    assert "9932" in service["healthcheck"]["test"][-1]


def test_dockerfile_default_command(help_texts: dict[str, str]) -> None:
    """The image's default command is a proxy reachable from outside the container."""
    line = next(line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    argv = json.loads(line[4:])
    assert_flags_documented(argv, help_texts)
    settings = check_command(argv)
    assert settings.listen == "0.0.0.0:6432" and settings.metrics == "0.0.0.0:9930"


def unit(name: str) -> dict[str, list[str]]:
    """A systemd unit's [Service] settings: key → values in order."""
    section, out = "", {}
    for raw in (DEPLOY / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an EnvironmentFile."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


SYSTEMD_UNITS = ("fasterdata-proxy.service", "fasterdata-analyzer@.service", "fasterdata-glcache.service")


def systemd_argv(name: str, instance: str = "9931") -> tuple[list[str], dict[str, str]]:
    """ExecStart of a unit with env.example applied, as systemd would expand it; (argv, environment)."""
    service = unit(name)
    env: dict[str, str] = {}
    for assignment in service.get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value
    env.update(env_file(DEPLOY / "systemd" / "env.example"))  # EnvironmentFile= wins over Environment=
    specifiers = {"%i": instance, "%H": socket.gethostname(), "%S": "/var/lib", "%%": "%"}
    argv = []
    for word in shlex.split(service["ExecStart"][0]):
        for spec, value in specifiers.items():
            word = word.replace(spec, value)
        argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    for key in env:
        for spec, spec_value in specifiers.items():
            env[key] = env[key].replace(spec, spec_value)
    return argv, env


@pytest.mark.parametrize("name, command", [("fasterdata-proxy.service", "proxy"),
                                           ("fasterdata-analyzer@.service", "analyze")])
def test_systemd_units(name: str, command: str, help_texts: dict[str, str]) -> None:
    """ExecStart, expanded as systemd would with env.example, is a valid `fasterdata` command line."""
    service = unit(name)
    assert service["EnvironmentFile"] == ["/etc/fasterdata/env"]
    assert service["Restart"] == ["on-failure"] and service["KillSignal"] == ["SIGTERM"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # both reload on SIGHUP (certificates, rules)
    assert service["DynamicUser"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    argv, env = systemd_argv(name)
    assert argv[0] == "/opt/fasterdata/bin/fasterdata" and argv[1] == command
    assert_flags_documented(argv[1:], help_texts)
    fasterdata_env = {k: v for k, v in env.items() if k.startswith("FASTERDATA_")}
    settings = check_command(argv[1:], environ=fasterdata_env)
    stop = int(service["TimeoutStopSec"][0].rstrip("s"))
    if command == "proxy":
        assert settings.metrics == env["PROXY_METRICS"]
        assert service["StateDirectory"] == ["fasterdata-proxy"]
        assert settings.spool_dir == "/var/lib/fasterdata-proxy", "the spool must live in the StateDirectory"
        assert stop > settings.shutdown_grace, "TimeoutStopSec must exceed shutdown_grace"
    else:
        assert settings.metrics.endswith(":9931") and settings.consumer.endswith("-9931")


def test_systemd_env_example_names_real_settings() -> None:
    """env.example sets only real FASTERDATA_* settings and the units' own variables."""
    fields = set().union(*(model.model_fields for model in COMMANDS.values()))
    for key in env_file(DEPLOY / "systemd" / "env.example"):
        if key.startswith("FASTERDATA_"):
            assert key.removeprefix("FASTERDATA_").lower() in fields, f"{key} is no fasterdata setting"
        else:
            assert f"${{{key}}}" in "".join(unit(n)["ExecStart"][0] for n in SYSTEMD_UNITS), key
    assert "FASTERDATA_METRICS" not in env_file(DEPLOY / "systemd" / "env.example"), \
        "one FASTERDATA_METRICS would give the proxy and the analyzers the same port"


def test_systemd_gl_serve_unit(help_texts: dict[str, str]) -> None:
    """The ledger cache's ExecStart, expanded with env.example, is a `gl serve` the real CLI accepts."""
    service = unit("fasterdata-glcache.service")
    assert service["EnvironmentFile"] == ["/etc/fasterdata/env"]
    assert service["Restart"] == ["on-failure"] and service["KillSignal"] == ["SIGTERM"]
    assert "ExecReload" not in service, "gl serve has no reload: SIGHUP would end it"
    assert service["DynamicUser"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    argv, env = systemd_argv("fasterdata-glcache.service")
    assert argv[0] == "/opt/fasterdata/bin/fasterdata" and argv[1:3] == ["gl", "serve"]
    assert_flags_documented(argv[1:], help_texts)
    fasterdata_env = {k: v for k, v in env.items() if k.startswith("FASTERDATA_")}
    settings = check_command(argv[1:], environ=fasterdata_env)
    assert settings.flight == env["GL_FLIGHT"] and settings.metrics == env["GL_METRICS"]
    assert settings.dsn == env["FASTERDATA_DSN"]
    assert settings.consumer == f"{socket.gethostname()}-glcache", "a consumer name that survives restarts"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units, with ExecStart pointed at this checkout's `fasterdata`."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    binary = shutil.which("fasterdata", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("no `fasterdata` console script next to this Python (pip install -e .)")
    for path in (DEPLOY / "systemd").glob("*.service"):
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/fasterdata/bin/fasterdata", binary))
    units = ["./fasterdata-proxy.service", "./fasterdata-analyzer@9931.service", "./fasterdata-glcache.service"]
    done = subprocess.run([tool, "verify", *units], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "fasterdata" in line]
    assert done.returncode == 0 and not ours, "\n".join(ours) or done.stderr


def test_kubernetes_command_lines(tmp_path: Path, help_texts: dict[str, str]) -> None:
    """Container args parse, and load with the ConfigMap's file; ports and grace periods agree."""
    objects = kube_objects()
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    files = {}
    for key, text in configmap["data"].items():
        (tmp_path / key).write_text(text)
        files[f"/etc/fasterdata/{key}"] = str(tmp_path / key)
    expected = {"fasterdata-proxy": ("proxy", "0.0.0.0:9930"), "fasterdata-analyzer": ("analyze", "0.0.0.0:9931"),
                "fasterdata-glcache": ("gl", "0.0.0.0:9932")}
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        command, metrics = expected[obj["metadata"]["name"]]
        pod = obj["spec"]["template"]["spec"]
        container = pod["containers"][0]
        argv = container["args"]
        assert argv[0] == command
        assert_flags_documented(argv, help_texts)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/etc/fasterdata") == "config"
        env = {e["name"]: "pod-name" for e in container.get("env", [])}
        settings = check_command(argv, files, environ=env)
        assert settings.metrics == metrics
        ports = {p["containerPort"] for p in container["ports"]}
        assert int(metrics.rsplit(":", 1)[1]) in ports
        if command == "proxy":
            assert int(settings.listen.rsplit(":", 1)[1]) in ports
            assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace
            state = next(path for path, name in mounts.items() if name == "state")
            assert settings.spool_dir.startswith(state), "the spool must be on the state volume"
        else:
            assert settings.consumer == "pod-name"
        if command == "gl":
            assert argv[1] == "serve" and int(settings.flight.rsplit(":", 1)[1]) in ports
            assert settings.dsn.startswith("host=") and "password" not in settings.dsn


def test_config_files_load_for_every_command() -> None:
    """The shipped config files are valid for `proxy`, `analyze` and `gl` alike (unknown keys would stop
    start-up)."""
    assert load("proxy", DEPLOY / "compose" / "fasterdata.yaml", environ={}).upstream == "postgres:5432"
    assert load("analyze", DEPLOY / "compose" / "fasterdata.yaml", environ={}).metrics == "0.0.0.0:9931"
    assert load("gl", DEPLOY / "compose" / "fasterdata.yaml", environ={}).metrics == "0.0.0.0:9932"


def test_prometheus_scrapes_both_jobs() -> None:
    """prometheus.yml scrapes the jobs the alert rules select on."""
    config = yaml_docs(PROM / "prometheus.yml")[0]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"fasterdata-proxy", "fasterdata-analyzer", "fasterdata-glcache"} <= set(jobs)
    ports = {name: {sd["port"] for sd in jobs[name]["dns_sd_configs"]} for name in
             ("fasterdata-proxy", "fasterdata-analyzer", "fasterdata-glcache")}
    assert ports == {"fasterdata-proxy": {9930}, "fasterdata-analyzer": {9931}, "fasterdata-glcache": {9932}}
    assert config["rule_files"] == ["alerts.yml"]
    for rule in alert_rules():
        for pattern in re.findall(r'job=~?"([^"]+)"', rule["expr"]):
            assert any(re.fullmatch(pattern, job) for job in jobs), f"{rule.get('alert')}: job {pattern!r} is scraped"

