"""deploy/: the files parse, and what they pass the service is what the service reads.

Docker and Kubernetes cannot run on the machines the suite runs on, so the images, compose
file and manifests are checked here instead: every YAML document parses; the Dockerfile
uses known instructions, runs as a non-root user and checks the liveness route; every
environment variable the files set (Dockerfile ENV, compose `environment`, deploy/.env.example,
Kubernetes `env` and the keys of the ConfigMaps and Secrets read with `envFrom`) is one the
service reads (as pydantic-settings looks them up for `Settings`); every command they run
parses with `countersign`'s own argparse; the probes name the real health routes. Last, the
Kubernetes and compose settings are run for real, minus the container: `countersign migrate`
and `countersign serve` as processes against a real PostgreSQL, with the manifests'
environment, until the readiness route answers.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml  # PyYAML: pinned in constraints.txt (a dependency of llama-index-core)

from service.api import health
from service.api.routes import ROUTES
from service.cli import build_parser
from service.config import Settings, load_settings
from service.env_check import OTHER_VARIABLES, accepted_names, unknown_variable_warnings

from .conftest import free_port
from .peers.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PLACEHOLDER = "CHANGE-ME"
# Read by the interpreter, not the service: the only other variables the image may set.
INTERPRETER_VARIABLES = frozenset({"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"})
# Read by compose itself (interpolation) for a peer's container, never by the service.
COMPOSE_ONLY_VARIABLES = frozenset({"POSTGRES_PASSWORD"})
# Where a Kubernetes container's image puts the program it runs.
ENTRYPOINT = ["countersign"]


def route_path(handler: object) -> str:
    return next(r.path for r in ROUTES if r.handler is handler)


LIVENESS = route_path(health.healthz)
READINESS = route_path(health.readyz)


def service_variables() -> frozenset[str]:
    """Every environment variable name `Settings` is read from, upper-cased (the settings are
    case-insensitive), as pydantic-settings itself derives them: env_prefix + field name, or
    a field's validation aliases alone (MicrosoftAppId, OPENAI_API_KEY). `_extract_field_info`
    is pydantic-settings' own lookup (pinned in constraints.txt): if it moves, this fails
    loudly rather than checking against a list of our own."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(Settings)
    names = {env_name.upper() for field_name, field in Settings.model_fields.items()
             for _key, env_name, _complex in source._extract_field_info(field, field_name)}
    return frozenset(names | OTHER_VARIABLES)


# -- reading the files ---------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml_documents(path)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    return yaml_documents(DEPLOY / "compose.yaml")[0]  # type: ignore[no-any-return]


def compose_countersign_services() -> dict[str, dict[str, Any]]:
    """The compose services that run our image (the others are PostgreSQL and Mailpit)."""
    return {name: s for name, s in compose()["services"].items() if "build" in s}


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def dockerfile() -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate((DEPLOY / "Dockerfile").read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT / CMD / HEALTHCHECK CMD in exec (JSON) form: shell form would run under
    /bin/sh -c, and signals would reach the shell instead of the service."""
    parsed = yaml.safe_load(args)  # a JSON array is YAML too
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), f"not exec form: {args}"
    return parsed


def dockerfile_env() -> dict[str, str]:
    """The final stage's ENV: what the service's process gets (a build stage's is pip's)."""
    env: dict[str, str] = {}
    for ins in final_stage():
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                key, sep, value = pair.partition("=")
                assert sep, f"line {ins.line}: write ENV as KEY=value ({pair!r})"
                env[key] = value
    return env


def image_command() -> list[str]:
    stage = final_stage()
    entrypoint = [exec_form(i.args) for i in stage if i.keyword == "ENTRYPOINT"]
    cmd = [exec_form(i.args) for i in stage if i.keyword == "CMD"]
    return (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])


@dataclass(frozen=True)
class Container:
    where: str  # "Deployment countersign" ...
    spec: dict[str, Any]
    pod: dict[str, Any]


def k8s_containers() -> list[Container]:
    found = []
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob"):
            pod = obj["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                found.append(Container(f"{obj['kind']} {obj['metadata']['name']} container {c['name']}", c, pod))
    return found


def k8s_env(container: Container) -> dict[str, str | None]:
    """The variables a container gets: `env` entries (None when taken from a secret/config
    reference) and every key of the ConfigMaps and Secrets it reads with `envFrom`."""
    env: dict[str, str | None] = {}
    for source in container.spec.get("envFrom", []):
        for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if ref in source:
                obj = k8s_object(kind, source[ref]["name"])
                env.update({k: str(v) for k, v in {**obj.get("data", {}), **obj.get("stringData", {})}.items()})
    for entry in container.spec.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env


def k8s_command(container: Container) -> list[str]:
    command = container.spec.get("command", ENTRYPOINT)
    return [*command, *container.spec.get("args", [])]


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", image_command()[len(ENTRYPOINT):])
    entrypoint = service.get("entrypoint", ENTRYPOINT)
    return [*entrypoint, *(shlex.split(command) if isinstance(command, str) else command)]


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}`, `${NAME:?error}` (what compose.yaml uses)."""
    def one(match: re.Match[str]) -> str:
        name, op = match["name"], match["op"]
        if variables.get(name):
            return variables[name]
        if op in (":-", "-"):
            return match["arg"]
        raise AssertionError(f"compose would refuse: {name} is not set ({match['arg'] or 'required'})")
    return INTERPOLATION.sub(one, value)


# -- every file parses -------------------------------------------------------------------------


def test_the_deploy_files_exist() -> None:
    for path in ("Dockerfile", "compose.yaml", ".env.example", "countersign.toml", "README.md",
                 "kubernetes/deployment.yaml", "kubernetes/service.yaml", "kubernetes/configmap.yaml",
                 "kubernetes/secret.example.yaml", "kubernetes/migrate-job.yaml"):
        assert (DEPLOY / path).is_file(), path
    assert (ROOT / ".dockerignore").is_file()
    # Said plainly where an operator reads first: none of this was run in a container here.
    assert "Docker cannot run on the machines" in (DEPLOY / "README.md").read_text()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = yaml_documents(path)
    assert documents, f"{path} is empty"
    if path.parent == K8S:
        for doc in documents:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
            assert doc["metadata"].get("name"), doc


def test_the_policy_files_are_accepted_by_the_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose policies file, and the one in the ConfigMap, load as `serve` loads them
    (unknown keys, bad durations ... would refuse to start)."""
    in_configmap = tmp_path / "countersign.toml"
    in_configmap.write_text(k8s_object("ConfigMap", "countersign-policies")["data"]["countersign.toml"])
    for path in (DEPLOY / "countersign.toml", in_configmap):
        monkeypatch.setenv("COUNTERSIGN_CONFIG", str(path))
        settings = load_settings()
        assert "default" in settings.policies, path


# -- the Dockerfile ------------------------------------------------------------------------------

KNOWN_INSTRUCTIONS = frozenset({"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                                "SHELL"})


def test_dockerfile_instructions_are_known_ones() -> None:
    instructions = dockerfile()
    assert instructions[0].keyword in ("FROM", "ARG")
    for ins in instructions:
        assert ins.keyword in KNOWN_INSTRUCTIONS, f"line {ins.line}: unknown instruction {ins.keyword}"
        assert ins.keyword != "ADD", f"line {ins.line}: COPY, not ADD (no remote URLs, no auto-extraction)"


def test_dockerfile_base_is_slim_python_311_or_newer() -> None:
    args = {k: v for ins in dockerfile() if ins.keyword == "ARG" for k, _, v in [ins.args.partition("=")]}
    for ins in dockerfile():
        if ins.keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], ins.args.split()[0])
            match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", image)
            assert match, f"line {ins.line}: {image} is not a slim Python image"
            assert (int(match[1]), int(match[2])) >= (3, 11)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [ins for ins in final_stage() if ins.keyword == "USER"]
    assert users, "the final stage has no USER: it would run as root"
    user = users[-1].args.split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, users[-1]
    after = final_stage()[final_stage().index(users[-1]):]
    assert not [i for i in after if i.keyword == "RUN"], "RUN after USER: keep the image's files root-owned"
    for container in k8s_containers():
        context = {**container.pod.get("securityContext", {}), **container.spec.get("securityContext", {})}
        assert context.get("runAsUser") == int(user), container.where


def test_dockerfile_installs_from_the_lock_file() -> None:
    installs = [i for i in dockerfile() if i.keyword == "RUN" and "pip install" in i.args and " ." in i.args + " "]
    assert installs, "no `pip install .`"
    for ins in installs:
        words = ins.args.split()
        assert "--no-cache-dir" in words, ins
        assert any(pair == ("-c", "constraints.txt") for pair in itertools.pairwise(words)), ins


def test_dockerfile_checks_the_liveness_route() -> None:
    checks = [i for i in final_stage() if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].args.partition("CMD ")
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"], "slim has no curl: the health check uses the interpreter"
    assert f"{LIVENESS}'" in argv[2], "the HEALTHCHECK fetches another path than the liveness route"
    compile(argv[2], "HEALTHCHECK", "exec")  # the one-liner is valid Python
    assert "--timeout=" in options and "--interval=" in options


def test_dockerfile_migrates_only_as_an_explicit_step() -> None:
    assert image_command() == ["countersign", "serve"]
    for ins in dockerfile():
        assert not (ins.keyword == "RUN" and "migrate" in ins.args), f"line {ins.line}: migrations at build time"
    assert "COUNTERSIGN_AUTO_MIGRATE" not in dockerfile_env()


def test_dockerfile_exposes_the_port_and_declares_the_data_volume() -> None:
    env = dockerfile_env()
    stage = final_stage()
    exposed = [p.split("/")[0] for i in stage if i.keyword == "EXPOSE" for p in i.args.split()]
    assert exposed == [env["COUNTERSIGN_PORT"]]
    volumes = [v for i in stage if i.keyword == "VOLUME" for v in exec_form(i.args)]
    data_dir = PurePosixPath(env["COUNTERSIGN_DATA_DIR"])
    assert any(data_dir == PurePosixPath(v) or PurePosixPath(v) in data_dir.parents for v in volumes), volumes
    assert env["COUNTERSIGN_HOST"] == "0.0.0.0"  # inside the container's own network namespace


SECRET_NAMES = re.compile(r"TOKEN|SECRET|PASSWORD|AUDIT_KEY|API_KEY", re.IGNORECASE)


def test_no_secret_is_baked_into_the_image() -> None:
    for ins in dockerfile():
        if ins.keyword in ("ENV", "ARG"):
            assert not SECRET_NAMES.search(ins.args), f"line {ins.line}: a secret in the image: {ins.args}"
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            sources = ins.args.split()[:-1]
            assert not [s for s in sources if ".env" in s or "data" in s.split("/")], ins


def test_dockerignore_lets_in_only_what_the_install_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "an allow-list: everything else (data/, .venv, .env, .git) stays out"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    copied = {src.rstrip("/") for ins in dockerfile() if ins.keyword == "COPY" and "--from=" not in ins.args
              for src in ins.args.split()[:-1]}
    assert copied <= allowed, copied - allowed
    for path in allowed:
        assert (ROOT / path).exists(), path


# -- the key check: every variable is a setting, every command a subcommand -----------------------


def passed_variables() -> Iterator[tuple[str, str]]:
    """(where, variable name) for every variable the deploy files hand the service."""
    for name in dockerfile_env():
        yield "Dockerfile ENV", name
    for service_name, service in compose_countersign_services().items():
        for name in compose_environment(service):
            yield f"compose service {service_name}", name
    for name in env_example():
        yield "deploy/.env.example", name
    for container in k8s_containers():
        for name in k8s_env(container):
            yield container.where, name
    for obj in k8s_objects():  # every key, also of a ConfigMap/Secret no container reads yet
        if obj["kind"] == "Secret" or obj["metadata"]["name"] == "countersign-settings":
            for name in {**obj.get("data", {}), **obj.get("stringData", {})}:
                yield f"{obj['kind']} {obj['metadata']['name']}", name


def test_every_variable_passed_is_one_the_service_reads() -> None:
    read = service_variables()
    compose_interpolated = {m["name"] for s in compose()["services"].values()
                            for v in compose_environment(s).values() for m in INTERPOLATION.finditer(v)}
    unknown = []
    for where, name in passed_variables():
        if name.upper() in read:
            continue
        if where == "Dockerfile ENV" and name in INTERPRETER_VARIABLES:
            continue
        if where == "deploy/.env.example" and name in COMPOSE_ONLY_VARIABLES and name in compose_interpolated:
            continue
        unknown.append(f"{where}: {name}")
    assert not unknown, "variables no setting reads:\n" + "\n".join(unknown)
    # ... and `serve` would not warn about any of them either (its own check, with its hints).
    names = {name: "" for _, name in passed_variables()}
    assert unknown_variable_warnings(names) == []


def test_the_variables_have_the_spelling_the_docs_use() -> None:
    # The settings are case-insensitive, but an operator greps for the README's spelling
    # (COUNTERSIGN_SMTP_HOST, MicrosoftAppId), which is how `serve`'s own check spells them.
    spelled = set(accepted_names().values()) | INTERPRETER_VARIABLES | COMPOSE_ONLY_VARIABLES
    for where, name in passed_variables():
        assert name in spelled, f"{where}: {name}"


def test_compose_interpolates_only_what_env_example_documents() -> None:
    documented = env_example().keys()
    text = (DEPLOY / "compose.yaml").read_text()
    for match in INTERPOLATION.finditer(text):
        if match["op"] in (":?", "?"):
            assert match["name"] in documented, f"{match[0]}: required, but not in deploy/.env.example"


def commands_run() -> list[tuple[str, list[str]]]:
    found = [("Dockerfile", image_command())]
    found += [(f"compose service {n}", compose_command(s)) for n, s in compose_countersign_services().items()]
    found += [(c.where, k8s_command(c)) for c in k8s_containers()]
    return found


def test_every_command_is_a_real_countersign_subcommand() -> None:
    parser = build_parser()
    for where, argv in commands_run():
        assert argv[:1] == ["countersign"], f"{where}: runs {argv}"
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: `{shlex.join(argv)}` is not a valid countersign command")
    ran = {(where.split()[0], argv[1]) for where, argv in commands_run()}
    # Migrations are a step of their own everywhere, and the service is served everywhere.
    assert {("compose", "migrate"), ("compose", "serve"), ("Job", "migrate"), ("Deployment", "serve")} <= ran


# -- compose -----------------------------------------------------------------------------------------


def test_compose_starts_the_service_after_postgres_and_the_migration() -> None:
    services = compose()["services"]
    postgres = next(n for n, s in services.items() if str(s.get("image", "")).startswith("postgres:"))
    assert "pg_isready" in " ".join(services[postgres]["healthcheck"]["test"])
    migrate = next(n for n, s in compose_countersign_services().items() if compose_command(s)[1] == "migrate")
    serve = next(n for n, s in compose_countersign_services().items() if compose_command(s)[1] == "serve")
    assert services[migrate]["depends_on"][postgres]["condition"] == "service_healthy"
    assert services[serve]["depends_on"][migrate]["condition"] == "service_completed_successfully"
    env = compose_environment(services[serve])
    catcher = env["COUNTERSIGN_SMTP_HOST"]
    assert catcher in services and "mailpit" in services[catcher]["image"]
    assert env["COUNTERSIGN_SMTP_PORT"] == "1025" and env["COUNTERSIGN_SMTP_SECURITY"] == "none"
    for name in ("COUNTERSIGN_DATABASE_URL", "COUNTERSIGN_PUBLIC_URL", "COUNTERSIGN_AUDIT_KEY",
                 "COUNTERSIGN_API_TOKEN", "COUNTERSIGN_SESSION_SECRET", "COUNTERSIGN_CALLBACK_SIGNING_SECRET"):
        assert name in env, name
    for name in ("COUNTERSIGN_AUDIT_KEY", "COUNTERSIGN_API_TOKEN", "COUNTERSIGN_WEBHOOK_SECRET"):
        assert env[name].startswith("${"), f"{name}: from deploy/.env, never written in compose.yaml"
    for published in [p for s in services.values() for p in s.get("ports", [])]:
        assert published.startswith("127.0.0.1:"), f"{published}: publish on loopback only"


def test_env_example_holds_placeholders_only() -> None:
    for name, value in env_example().items():
        assert value == PLACEHOLDER, f"{name}: {value!r} in deploy/.env.example"
    assert "/deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()


# -- Kubernetes --------------------------------------------------------------------------------------


def test_deployment_has_replicas_probes_on_the_real_routes_and_resources() -> None:
    deployment = k8s_object("Deployment", "countersign")
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(dockerfile_env()["COUNTERSIGN_PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == READINESS
    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in (*ports, *ports.values()), probe
    service = k8s_object("Service", "countersign")
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {*ports, *ports.values()}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_every_container_is_locked_down_and_bounded() -> None:
    for container in k8s_containers():
        pod, spec = container.pod.get("securityContext", {}), container.spec.get("securityContext", {})
        assert {**pod, **spec}.get("runAsNonRoot") is True, container.where
        assert spec.get("readOnlyRootFilesystem") is True, container.where
        assert spec.get("allowPrivilegeEscalation") is False, container.where
        assert spec.get("capabilities", {}).get("drop") == ["ALL"], container.where
        resources = container.spec["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), container.where
        assert "memory" in resources["limits"], container.where
        # With a read-only root, the data directory and /tmp must be writable mounts.
        mounts = {PurePosixPath(m["mountPath"]) for m in container.spec.get("volumeMounts", [])
                  if not m.get("readOnly")}
        data_dir = PurePosixPath(dockerfile_env()["COUNTERSIGN_DATA_DIR"])
        assert PurePosixPath("/tmp") in mounts, container.where
        assert mounts & {data_dir, *data_dir.parents} - {PurePosixPath("/")}, container.where


def test_the_policies_configmap_is_mounted_where_the_config_setting_points() -> None:
    config = PurePosixPath(k8s_object("ConfigMap", "countersign-settings")["data"]["COUNTERSIGN_CONFIG"])
    pod = k8s_object("Deployment", "countersign")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent)
    policies = k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert config.name in policies["data"]


def test_migration_job_runs_once_and_the_secret_is_a_template() -> None:
    job = k8s_object("Job", "countersign-migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    secret = k8s_object("Secret", "countersign")
    for name, value in secret["stringData"].items():
        assert value == "" or PLACEHOLDER in value, f"{name}: the template must hold placeholders only"
    assert "data" not in secret
    # Left as it is, the placeholder audit key is too short: the service refuses to start.
    assert len(secret["stringData"]["COUNTERSIGN_AUDIT_KEY"]) < 32


# -- run for real, minus the container -----------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What one of the deploy files starts: the variables of the migration and of the service."""
    migrate: list[str]
    migrate_env: dict[str, str]
    serve: list[str]
    serve_env: dict[str, str]
    policies: str


def secret_values(env: Mapping[str, str | None]) -> dict[str, str]:
    # Placeholders become fresh random values (distinct, so the callback secret differs
    # from the API credentials, as `serve` requires); empty optional ones stay empty.
    return {k: (secrets.token_urlsafe(32) if v and PLACEHOLDER in v else v or "") for k, v in env.items()}


def from_kubernetes() -> Deployment:
    job = next(c for c in k8s_containers() if c.where.startswith("Job"))
    server = next(c for c in k8s_containers() if c.where.startswith("Deployment"))
    serve_env = secret_values(k8s_env(server))
    # A secretKeyRef (None here) reads the same Secret the server gets.
    migrate_env = {k: serve_env[k] if v is None else v for k, v in secret_values(k8s_env(job)).items()}
    return Deployment(k8s_command(job), migrate_env, k8s_command(server), serve_env,
                      k8s_object("ConfigMap", "countersign-policies")["data"]["countersign.toml"])


def from_compose() -> Deployment:
    variables = secret_values(env_example())
    services = compose_countersign_services()
    migrate = next(s for s in services.values() if compose_command(s)[1] == "migrate")
    serve = next(s for s in services.values() if compose_command(s)[1] == "serve")
    return Deployment(compose_command(migrate), {k: interpolate(v, variables) for k, v in compose_environment(migrate).items()},
                      compose_command(serve), {k: interpolate(v, variables) for k, v in compose_environment(serve).items()},
                      (DEPLOY / "countersign.toml").read_text())


def as_process(argv: list[str]) -> list[str]:
    assert argv[0] == "countersign"
    return [sys.executable, "-m", "service", *argv[1:]]


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> int:
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        assert time.monotonic() < deadline, f"{url} did not answer 200 (last: {status}):\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.parametrize("source", [from_kubernetes, from_compose], ids=["kubernetes", "compose"])
def test_the_deploy_settings_migrate_and_serve_against_postgresql(
        source: Any, pg_server: PostgresServer, tmp_path: Path) -> None:
    deployment: Deployment = source()
    database = pg_server.create_database()
    port = free_port()
    policies = tmp_path / "countersign.toml"
    policies.write_text(deployment.policies)
    # What the container would differ in: the image's own variables, a local port and data
    # directory, the test's database and the mounted policies file. Nothing else of ours.
    base = {k: v for k, v in os.environ.items()
            if not k.upper().startswith(("COUNTERSIGN_", "MICROSOFT", "OPENAI_"))}
    image = {k: v for k, v in dockerfile_env().items() if k not in INTERPRETER_VARIABLES}
    here = {"COUNTERSIGN_HOST": "127.0.0.1", "COUNTERSIGN_PORT": str(port),
            "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_DATABASE_URL": database,
            "PYTHONPATH": str(ROOT)}
    if "COUNTERSIGN_CONFIG" in deployment.serve_env:
        here["COUNTERSIGN_CONFIG"] = str(policies)
    migrate_env = {**base, **image, **deployment.migrate_env,
                   **{k: here[k] for k in ("COUNTERSIGN_DATABASE_URL", "COUNTERSIGN_DATA_DIR", "PYTHONPATH")}}
    log = tmp_path / "serve.log"
    try:
        migrated = subprocess.run(as_process(deployment.migrate), env=migrate_env,
                                  capture_output=True, text=True, timeout=120)
        assert migrated.returncode == 0, migrated.stderr
        with open(log, "wb") as out:
            proc = subprocess.Popen(as_process(deployment.serve), env={**base, **image, **deployment.serve_env, **here},
                                    stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60
            assert wait_for(f"http://127.0.0.1:{port}{READINESS}", proc, log, deadline) == 200
            assert wait_for(f"http://127.0.0.1:{port}{LIVENESS}", proc, log, deadline) == 200
            # The image's HEALTHCHECK one-liner itself, with the interpreter the image has.
            (check,) = [i for i in final_stage() if i.keyword == "HEALTHCHECK"]
            healthcheck = exec_form(check.args.partition("CMD ")[2])
            ran = subprocess.run([sys.executable, *healthcheck[1:]], env={**base, **image, **here},
                                 capture_output=True, text=True, timeout=30)
            assert ran.returncode == 0, ran.stderr
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert "is not a setting" not in log.read_text()
    finally:
        pg_server.drop_database(database)
