"""docker-compose.yml and the Dockerfile agree with the project they run.

Docker cannot run on the development machines, so these tests read the files instead: every
service is wired to healthy dependencies, volumes exist, the environment holds only variables
that ``shop/settings.py`` reads, and every command names a module, object, task or extra that
really exists. When a Docker CLI with Compose is on PATH, ``docker compose config`` also
validates the file against the Compose specification.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

BASE_DIR = Path(__file__).resolve().parents[2]
COMPOSE_FILE = BASE_DIR / "docker-compose.yml"
DOCKERFILE = BASE_DIR / "Dockerfile"
SETTINGS_FILE = BASE_DIR / "shop" / "settings.py"

SERVICES = {"postgres", "redis", "web", "worker", "beat"}
APP_SERVICES = ["web", "worker", "beat"]
#: Variables the app containers may set although settings.py does not read them.
STANDARD_VARIABLES = {"HF_HOME"}
REQUIRED_VARIABLES = {
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "DJANGO_SECRET_KEY",
    "VISUALSEARCH_ENCODER",
}
TRUTHY = {"1", "true", "yes", "on"}  # what settings._env_bool accepts as true


# --- helpers ------------------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    """A service's environment as a dict, whether written as a mapping or a list."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def interpolate(value: str) -> str:
    """Compose interpolation with an empty host environment: defaults apply."""

    def replace(match: re.Match) -> str:
        operator, word = match.group(2), match.group(3) or ""
        if operator in (":-", "-"):
            return word
        if operator in (":?", "?"):
            return "<required>"
        return ""

    return re.sub(r"\$\{(\w+)(:?[-?+])?([^}]*)\}", replace, value)


def command(name: str) -> str:
    """A service's command as one shell-like string."""
    value = service(name).get("command", "")
    return " ".join(value) if isinstance(value, list) else str(value)


def healthcheck_test(name: str) -> str:
    test = service(name)["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def depends_on(name: str) -> dict[str, dict]:
    value = service(name).get("depends_on") or {}
    if isinstance(value, list):  # short syntax: no condition at all
        return {dep: {} for dep in value}
    return value


def named_volumes(name: str) -> dict[str, str]:
    """``{volume name: container path}`` of a service's named-volume mounts."""
    mounts = {}
    for mount in service(name).get("volumes") or []:
        if isinstance(mount, dict):
            if mount.get("type", "volume") == "volume" and mount.get("source"):
                mounts[mount["source"]] = mount["target"]
            continue
        source, _, rest = mount.partition(":")
        if rest and not source.startswith((".", "/", "~", "$")):
            mounts[source] = rest.split(":")[0]
    return mounts


@cache
def settings_tree() -> ast.Module:
    return ast.parse(SETTINGS_FILE.read_text())


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


@cache
def settings_env_names() -> frozenset[str]:
    """Names read in settings.py: os.environ.get/[]/setdefault, os.getenv and _env_bool."""
    names = set()
    for node in ast.walk(settings_tree()):
        if isinstance(node, ast.Call) and node.args:
            func, first = node.func, node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            if (
                (isinstance(func, ast.Attribute) and _is_os_environ(func.value))
                or (isinstance(func, ast.Attribute) and func.attr == "getenv")
                or (isinstance(func, ast.Name) and func.id == "_env_bool")
            ):
                names.add(first.value)
        elif isinstance(node, ast.Subscript) and _is_os_environ(node.value):
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                names.add(node.slice.value)
    return frozenset(names)


def settings_assignment(name: str) -> ast.expr:
    for node in settings_tree().body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return node.value
    raise AssertionError(f"shop/settings.py assigns no {name}")


def module_defines(path: Path, name: str) -> bool:
    """Whether the module at ``path`` binds ``name`` at top level."""
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return True
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return True
    return False


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def pip_installs() -> list[list[str]]:
    """Argument lists of every ``pip install`` run in the Dockerfile."""
    installs = []
    for keyword, arguments in dockerfile_instructions():
        if keyword != "RUN":
            continue
        lexer = shlex.shlex(arguments, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("();<>|&"):  # a shell operator ends a command
                for i in range(len(words) - 1):
                    if re.fullmatch(r"(.*/)?pip3?", words[i]) and words[i + 1] == "install":
                        installs.append(words[i + 2 :])
                        break
                words = []
            else:
                words.append(token)
    return installs


def installed_requirements() -> list[str]:
    return [word for words in pip_installs() for word in words if not word.startswith("-")]


@cache
def pyproject() -> dict:
    return tomllib.loads((BASE_DIR / "pyproject.toml").read_text())


# --- the compose file ---------------------------------------------------------------------


def test_compose_file_uses_compose_spec_without_version_key():
    assert "version" not in compose(), "the Compose spec dropped the top-level `version:` key"


def test_all_services_are_defined():
    assert SERVICES <= set(compose()["services"])


def test_postgres_image_ships_pgvector():
    image = service("postgres")["image"]
    assert image.startswith("pgvector/pgvector:"), image


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(name):
    healthcheck = service(name).get("healthcheck")
    assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name} disables its healthcheck"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_are_awaited_until_healthy(name):
    for dependency, options in depends_on(name).items():
        assert dependency in compose()["services"], f"{name} depends on unknown {dependency}"
        if service(dependency).get("healthcheck"):
            assert options.get("condition") == "service_healthy", (
                f"{name} must wait for {dependency} to be healthy, not just started"
            )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_postgres_and_redis(name):
    assert {"postgres", "redis"} <= set(depends_on(name))


def test_referenced_volumes_are_declared():
    declared = set(compose().get("volumes") or {})
    for name in compose()["services"]:
        for volume in named_volumes(name):
            assert volume in declared, f"{name} mounts undeclared volume {volume!r}"


def test_web_and_worker_share_the_media_volume():
    media_root = environment("web")["MEDIA_ROOT"]
    assert environment("worker")["MEDIA_ROOT"] == media_root
    web = {path: volume for volume, path in named_volumes("web").items()}
    worker = {path: volume for volume, path in named_volumes("worker").items()}
    assert media_root in web, "MEDIA_ROOT of web is not on a named volume"
    assert worker.get(media_root) == web[media_root], "the worker must read the uploaded files"


def volume_holding(name: str, path: str) -> str | None:
    """The named volume of service ``name`` that ``path`` lies on, if any."""
    for volume, mount in named_volumes(name).items():
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return volume
    return None


def test_model_cache_is_a_volume_shared_by_web_and_worker():
    volumes = {
        name: volume_holding(name, environment(name)["HF_HOME"]) for name in ("web", "worker")
    }
    assert volumes["web"], "HF_HOME of web is not on a volume: CLIP weights would download again"
    assert volumes["worker"] == volumes["web"], "web and worker should share one model cache"


def test_postgres_and_redis_keep_their_data_on_volumes():
    assert "/var/lib/postgresql/data" in named_volumes("postgres").values()
    assert "/data" in named_volumes("redis").values()


# --- environment against settings.py ----------------------------------------------------------


def test_settings_parser_finds_the_known_variables():
    assert REQUIRED_VARIABLES | {"DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS", "MEDIA_ROOT"} <= (
        settings_env_names()
    )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_sets_only_variables_settings_read(name):
    unknown = set(environment(name)) - settings_env_names() - STANDARD_VARIABLES
    assert not unknown, f"{name} sets variables shop/settings.py never reads: {sorted(unknown)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_sets_required_variables(name):
    env = environment(name)
    missing = REQUIRED_VARIABLES - {key for key, value in env.items() if value}
    assert not missing, f"{name} lacks {sorted(missing)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_encoder_choice_is_one_settings_accept(name):
    choices = settings_assignment("_ENCODERS")
    assert isinstance(choices, ast.Dict)
    accepted = {key.value for key in choices.keys if isinstance(key, ast.Constant)}
    assert environment(name)["VISUALSEARCH_ENCODER"] in accepted
    assert environment(name)["VISUALSEARCH_ENCODER"] == "clip"
    assert interpolate(environment(name)["VISUALSEARCH_CLIP_MODEL"]) == "clip-ViT-B-32"


def test_production_settings_debug_off_and_secret_key_required():
    env = environment("web")
    assert env["DJANGO_DEBUG"].strip().lower() not in TRUTHY
    assert re.fullmatch(r"\$\{DJANGO_SECRET_KEY:\?[^}]+\}", env["DJANGO_SECRET_KEY"]), (
        "the secret key must come from the host, and compose must refuse to start without it"
    )


def test_allowed_hosts_include_the_healthcheck_host():
    hosts = interpolate(environment("web")["DJANGO_ALLOWED_HOSTS"]).split(",")
    health_host = urlparse(
        re.search(r"https?://[^'\"\s]+", healthcheck_test("web")).group()
    ).hostname
    assert health_host in hosts
    assert "localhost" in hosts


def test_database_url_points_at_the_postgres_service():
    from shop.settings import database_from_url

    database = database_from_url(environment("web")["DATABASE_URL"])
    postgres = environment("postgres")
    assert database["HOST"] == "postgres"
    assert database["PORT"] in ("", "5432")
    assert database["NAME"] == postgres["POSTGRES_DB"]
    assert database["USER"] == postgres["POSTGRES_USER"]
    assert database["PASSWORD"] == postgres["POSTGRES_PASSWORD"]
    assert f"-U {postgres['POSTGRES_USER']}" in healthcheck_test("postgres")
    assert "pg_isready" in healthcheck_test("postgres")


def test_broker_url_points_at_the_redis_service():
    url = urlparse(environment("worker")["CELERY_BROKER_URL"])
    assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)
    assert "redis-cli ping" in healthcheck_test("redis")


# --- commands reference things that exist -------------------------------------------------------


def test_web_migrates_then_serves_the_wsgi_application():
    cmd = command("web")
    assert "manage.py migrate --noinput" in cmd
    assert cmd.index("migrate") < cmd.index("gunicorn"), "migrate must run before gunicorn"
    assert "shop.wsgi:application" in cmd
    assert "0.0.0.0:8000" in cmd
    assert (BASE_DIR / "manage.py").is_file()
    module, obj = re.search(r"gunicorn\s+([\w.]+):(\w+)", cmd).groups()
    module_file = BASE_DIR.joinpath(*module.split(".")).with_suffix(".py")
    assert module_defines(module_file, obj), f"{module_file} defines no {obj}"
    assert "8000:8000" in [str(port) for port in service("web")["ports"]]


def test_web_healthcheck_requests_the_shop_with_urllib():
    test = healthcheck_test("web")
    assert "urllib" in test
    assert "http://127.0.0.1:8000/" in test


@pytest.mark.parametrize("name", ["worker", "beat"])
def test_celery_commands_name_the_project_app(name):
    assert re.search(r"\bcelery -A shop\b", command(name)), command(name)
    assert module_defines(BASE_DIR / "shop" / "celery.py", "app")


def test_worker_command_and_healthcheck():
    assert "celery -A shop worker" in command("worker")
    assert "--concurrency=2" in command("worker")
    test = healthcheck_test("worker")
    assert "inspect ping" in test
    assert "$$HOSTNAME" in test, (
        "ping only this container's node ($$ escapes compose interpolation)"
    )


def test_beat_runs_the_scheduler():
    assert "celery -A shop beat" in command("beat")


def test_beat_schedule_tasks_are_registered():
    schedule = ast.literal_eval(settings_assignment("CELERY_BEAT_SCHEDULE"))
    task_names = {entry["task"] for entry in schedule.values()}
    assert "visualsearch.sweep_pending" in task_names
    tasks_source = (BASE_DIR / "visualsearch" / "ingest" / "tasks.py").read_text()
    for task_name in task_names:
        assert f'name="{task_name}"' in tasks_source, f"no task registered as {task_name}"

    import visualsearch.ingest.tasks  # noqa: F401  (registers the shared tasks)
    from shop.celery import app

    assert task_names <= set(app.tasks)


# --- Dockerfile ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_build_context_has_a_dockerfile(name):
    build = service(name)["build"]
    context, dockerfile = (
        (build, "Dockerfile")
        if isinstance(build, str)
        else (
            build.get("context", "."),
            build.get("dockerfile", "Dockerfile"),
        )
    )
    assert (BASE_DIR / context / dockerfile).is_file()


def test_dockerfile_base_image_workdir_and_user():
    instructions = dockerfile_instructions()
    assert [args for keyword, args in instructions if keyword == "FROM"] == ["python:3.11-slim"]
    assert ("WORKDIR", "/app") in instructions
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the containers must not run as root"


def test_dockerfile_installs_extras_that_exist():
    extras_available = set(pyproject()["project"]["optional-dependencies"])
    requested = set()
    for requirement in installed_requirements():
        match = re.fullmatch(r"\.\[([\w,\s-]+)\]", requirement)
        if match:
            requested |= {extra.strip() for extra in match.group(1).split(",")}
    assert {"drf", "clip"} <= requested
    assert requested <= extras_available, f"unknown extras: {sorted(requested - extras_available)}"


def test_dockerfile_installs_the_cpu_torch_pinned_in_pyproject():
    pinned = {
        requirement
        for requirement in pyproject()["project"]["optional-dependencies"]["clip"]
        if requirement.startswith("torch")
    }
    torch_installs = [
        words for words in pip_installs() if any(w.startswith("torch") for w in words)
    ]
    assert torch_installs, "torch must be installed on its own, from the CPU index"
    for words in torch_installs:
        assert set(w for w in words if w.startswith("torch")) <= pinned, words
        assert "--index-url" in words
        assert words[words.index("--index-url") + 1].rstrip("/").endswith("/whl/cpu")


def test_dockerfile_never_installs_torchvision():
    assert not any("torchvision" in requirement for requirement in installed_requirements())


def test_dockerfile_installs_a_pinned_gunicorn():
    assert any(re.fullmatch(r"gunicorn==[\d.]+", r) for r in installed_requirements())


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {
        line.strip().rstrip("/")
        for line in (BASE_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".pgdata", ".cache", "media"} <= ignored


# --- validation by Docker Compose itself, where available -------------------------------------


def test_docker_compose_config_is_valid():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker CLI is not installed")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SECRET_KEY": "compose-config-check"},
    )
    assert result.returncode == 0, result.stderr
