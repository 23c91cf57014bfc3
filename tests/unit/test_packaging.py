"""The project as pyproject.toml packages it: its console scripts, and the wheel the image
installs (deploy/Dockerfile), built from exactly the files the Dockerfile copies."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from services.common.config import PROJECT_ROOT
from tests.unit.test_deploy import dockerfile_stages

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
#: Where each installed top-level package comes from in the repository.
SOURCES = {
    "services": PROJECT_ROOT / "services",
    "incidentledger": PROJECT_ROOT / "gen" / "incidentledger",
    "incidentledger_client": PROJECT_ROOT / "clients" / "python" / "incidentledger_client",
    "ledgerctl": PROJECT_ROOT / "clients" / "python" / "ledgerctl",
}


def test_the_services_and_tools_have_console_scripts() -> None:
    targets = set(SCRIPTS.values())
    for module in ("services.ledger", "services.notifier", "services.ledger.audit"):
        assert f"{module}.__main__:main" in targets, module
    assert "services.run:main" in targets
    # Its own entry point: it sets GRPC_VERBOSITY before anything imports grpc.
    assert SCRIPTS["ledgerctl"] == "ledgerctl:run"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_console_script_names_a_function_and_is_installed_in_the_venv(name: str) -> None:
    module, _, function = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    assert (Path(sys.executable).parent / name).is_file(), f"{name}: run make venv"


def test_the_build_backend_is_the_locked_setuptools() -> None:
    lock = (PROJECT_ROOT / "requirements" / "dev.txt").read_text(encoding="utf-8")
    pinned = re.search(r"^(setuptools==\S+)$", lock, re.MULTILINE)
    assert pinned is not None
    assert PYPROJECT["build-system"]["requires"] == [pinned.group(1)]


def test_the_image_installs_every_module_from_what_the_dockerfile_copies(tmp_path: Path) -> None:
    """The builder stage's copies (as .dockerignore leaves them: no caches), built into a wheel
    with the locked setuptools: every module of the four packages is in it, and nothing else."""
    context = tmp_path / "build"
    builder = next(stage for stage in dockerfile_stages() if stage.name == "builder")
    for instruction, arguments in builder.instructions:
        if instruction != "COPY" or "--from=" in arguments:
            continue
        *sources, destination = arguments.split()
        if destination.startswith("/"):
            continue  # outside the build directory (config/ goes to /app)
        for source in sources:
            origin, target = PROJECT_ROOT / source, context / destination
            if origin.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]")
                shutil.copytree(origin, target, ignore=ignore, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target)
    # The venv's setuptools is the pinned build backend (test above): no isolated download.
    pip_wheel = ["pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [sys.executable, "-m", *pip_wheel, "--wheel-dir", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("incident_ledger-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    packaged = {name for name in names if ".dist-info/" not in name}
    expected = {
        f"{package}/{path.relative_to(root).as_posix()}"
        for package, root in SOURCES.items()
        for path in root.rglob("*")
        # modules, type information and the message catalogs (compiled and their source)
        if path.is_file() and path.suffix in {".py", ".pyi", ".typed", ".po", ".mo"}
    }
    # The situation room's templates and static files (package data in pyproject.toml).
    room = PROJECT_ROOT / "services" / "situation_room"
    expected |= {
        f"services/situation_room/{path.relative_to(room).as_posix()}"
        for folder in ("templates", "static")
        for path in (room / folder).iterdir()
        if path.is_file()
    }
    assert packaged == expected
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        scripts = archive.read(entry_points).decode()
    assert all(f"{name} = {target}" in scripts for name, target in SCRIPTS.items())
