"""docker-compose.yml and the Dockerfile agree with the code (Docker cannot run here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from core.ticket import MAX_AGENTS
from infra.devserver import DYNAMIC_CONFIG
from infra.settings import SEARCH_ATTRIBUTES, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_image_is_pinned() -> None:
    for name, service in SERVICES.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.match(r"^v?\d", tag), f"{name}: tag {tag!r} is not a version"


def test_worker_settings_agree_with_the_code() -> None:
    env = SERVICES["worker"]["environment"]
    known = {f"UNSTUCK_{f.upper()}" for f in Settings.model_fields}
    unstuck = {k: v for k, v in env.items() if k.startswith("UNSTUCK_")}
    assert set(unstuck) <= known, f"unknown settings: {set(unstuck) - known}"
    assert set(env) - set(unstuck) <= {"OTEL_EXPORTER_OTLP_ENDPOINT"}
    settings = Settings.model_validate(
        {k.removeprefix("UNSTUCK_").lower(): v for k, v in unstuck.items()}
    )
    assert settings.host == "temporal" and settings.port == Settings().port
    assert settings.task_queue == Settings().task_queue
    assert settings.start_dev_server is False
    assert settings.ledger_url.startswith("postgresql://")
    db = settings.ledger_url.rsplit("/", 1)[1]
    init = (ROOT / "deploy/postgres-init/01-unstuck-ledger.sql").read_text()
    assert f"CREATE DATABASE {db};" in init
    pg = SERVICES["postgresql"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgresql:5432" in settings.ledger_url


def test_ports_and_addresses() -> None:
    assert "7233:7233" in SERVICES["temporal"]["ports"]
    assert SERVICES["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert SERVICES["temporal-setup"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert SERVICES["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgresql"


def test_search_attributes_registered_in_production_match_the_code() -> None:
    script = (ROOT / "deploy/register-search-attributes.sh").read_text()
    found = re.search(r"for pair in ([^;]+);", script)
    assert found, "the script must loop over NAME=TYPE pairs"
    pairs = dict(tuple(p.split("=", 1)) for p in found[1].split())
    assert pairs == SEARCH_ATTRIBUTES


def test_dockerfile_runs_the_worker_against_an_external_server() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]\.\d+", dockerfile, re.M)
    assert 'CMD ["python", "worker.py", "--no-dev-server"]' in dockerfile
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]:
        assert f"COPY {package} ./{package}" in dockerfile, package
    assert SERVICES["worker"]["build"] == "."
    # The worker runs as nobody, who cannot write /app: its bytecode is compiled at build
    # time, or each workflow instance's sandbox compiles the workflow modules again.
    compiled = re.search(r"python -m compileall -q /app$", dockerfile, re.M)
    user = re.search(r"^USER nobody$", dockerfile, re.M)
    assert compiled and user and compiled.start() < user.start()


def test_observability_services_agree_with_the_worker() -> None:
    env = SERVICES["worker"]["environment"]
    metrics_port = env["UNSTUCK_METRICS_ADDRESS"].rsplit(":", 1)[1]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"worker:{metrics_port}"]
    assert env["UNSTUCK_OTEL_EXPORTER"] == "otlp"
    collector = yaml.safe_load((ROOT / "deploy/otel-collector.yaml").read_text())
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == f"http://otel-collector:{http.rsplit(':', 1)[1]}"
    assert collector["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    for name in ("otel-collector", "prometheus"):
        assert SERVICES[name]["profiles"] == ["observability"]  # optional
    import importlib.util

    assert importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http"), (
        "the OTLP exporter the worker image needs is a project dependency"
    )


def test_production_server_limits_match_the_dev_server() -> None:
    """The temporal service reads deploy/dynamicconfig.yaml, whose values are the ones the
    embedded dev server gets (infra.devserver.DYNAMIC_CONFIG): 50+ agents per ticket."""
    temporal = SERVICES["temporal"]
    path = temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    mounts = {
        target.removesuffix(":ro"): source
        for source, _, target in (m.partition(":") for m in temporal["volumes"])
    }
    source = mounts[f"/etc/temporal/{path}"]  # auto-setup resolves it under /etc/temporal
    config = yaml.safe_load((ROOT / source).read_text())
    assert {key: values[0]["value"] for key, values in config.items()} == DYNAMIC_CONFIG
    assert DYNAMIC_CONFIG["history.maxInFlightUpdates"] >= MAX_AGENTS
