"""The wheel the images install, built and installed by the Dockerfiles' own commands.

The build stage's COPY lines and its wheel-and-install RUN are read from each Dockerfile and
run here, with the image's absolute paths placed under a temporary directory and `python3`
(or `python`) replaced by this interpreter. The resulting virtualenv must then run the
worker's command line, convert a real disk, and import the operator only with its extra.
pip fetches the dependencies from the configured index (PyPI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyper2kvm_worker import __version__
from tests.packaging import DOCKERFILES, REPO, Stage, build_recipe, ignored, parse

pytestmark = pytest.mark.needs("qemu-img")

COMMAND_TIMEOUT_SECONDS = 900  # a slow index or mirror, not a hung build
MiB = 1 << 20


@dataclass(frozen=True)
class Install:
    root: Path  # stands for the image's /
    venv: Path  # /opt/hyper2kvm
    wheel: Path

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def _clean_env() -> dict[str, str]:
    """This process's environment, less what would let the repository leak into the venv."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PIP_USER", "PIP_TARGET"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=_clean_env(),
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def _copy_context(stage: Stage, root: Path) -> Path:
    """Do the stage's WORKDIR and COPY lines: the repository is the context, .dockerignore
    applies. Returns the working directory (under `root`)."""

    def skip(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(REPO)
        return {name for name in names if ignored(str(relative / name))}

    workdir = Path("/")
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.value
        elif instruction.keyword == "COPY":
            words = instruction.value.split()
            assert not [w for w in words if w.startswith("--")], instruction
            *sources, dest = words
            target = root / (workdir / dest).relative_to("/")
            for source in sources:
                assert not ignored(source), f"{source} is in .dockerignore"
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=skip, dirs_exist_ok=True)
                else:
                    into_dir = dest.endswith("/") or len(sources) > 1
                    file_target = target / source if into_dir else target
                    file_target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / source, file_target)
    return root / workdir.relative_to("/")


def _localize(argv: list[str], root: Path) -> list[str]:
    """The image's command on this machine: paths under `root`, this interpreter, globs."""
    head, *rest = argv
    if head in {"python", "python3"}:
        head = sys.executable
    elif head.startswith("/opt/"):
        head = str(root / head.removeprefix("/"))
    else:
        pytest.fail(f"the build recipe runs {head!r}; teach this test what that is")
    words: list[str] = [head]
    for word in rest:
        if word.startswith("/"):
            local = str(root / word.removeprefix("/"))
            if "*" in local:
                pattern = Path(local)
                matches = sorted(pattern.parent.glob(pattern.name))
                assert len(matches) == 1, f"{word} matches {matches}"
                local = str(matches[0])
            words.append(local)
        else:
            words.append(word)
    return words


def _install(image: str, root: Path) -> Install:
    dockerfile = parse(DOCKERFILES[image])
    workdir = _copy_context(dockerfile.stage("build"), root)
    for command in build_recipe(dockerfile):
        _run(_localize(command, root), cwd=workdir)
    wheels = list((root / "wheels").glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    return Install(root=root, venv=root / "opt" / "hyper2kvm", wheel=wheels[0])


@pytest.fixture(scope="module")
def worker_install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    return _install("worker", tmp_path_factory.mktemp("worker-image"))


def test_wheel_holds_only_the_two_packages(worker_install: Install) -> None:
    with zipfile.ZipFile(worker_install.wheel) as wheel:
        tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert worker_install.wheel.name.startswith(f"hyper2kvm-{__version__}-")
    assert tops == {"hyper2kvm_worker", "hyper2kvm_operator", f"hyper2kvm-{__version__}.dist-info"}
    assert "tests" not in tops


def test_venv_holds_no_installer(worker_install: Install) -> None:
    assert not worker_install.bin("pip").exists()
    probe = "import importlib.util; print(importlib.util.find_spec('pip') is None)"
    done = _run([str(worker_install.bin("python")), "-c", probe])
    assert done.stdout.strip() == "True"


def test_worker_runs_from_the_installed_wheel(worker_install: Install) -> None:
    done = _run([str(worker_install.bin("hyper2kvm-worker")), "--version"])
    assert done.stdout.strip() == f"hyper2kvm-worker {__version__}"
    where = _run(
        [str(worker_install.bin("python")), "-c", "import hyper2kvm_worker as w; print(w.__file__)"]
    )
    assert Path(where.stdout.strip()).is_relative_to(worker_install.venv)


def test_operator_needs_its_extra(worker_install: Install) -> None:
    done = subprocess.run(
        [str(worker_install.bin("python")), "-c", "import hyper2kvm_operator.main"],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(),
        timeout=60,
    )
    assert done.returncode != 0
    assert "No module named 'kopf'" in done.stderr, done.stderr


def test_installed_worker_converts_a_vmdk(worker_install: Install, tmp_path: Path) -> None:
    raw = tmp_path / "source.raw"
    with raw.open("wb") as stream:
        stream.truncate(16 * MiB)
        for offset, fill in ((0, 0x5A), (3 * MiB + 512, 0xC3), (15 * MiB, 0x7E)):
            stream.seek(offset)
            stream.write(bytes(range(256)) * 16 + bytes([fill]) * 60000)
    vmdk = tmp_path / "source.vmdk"
    _run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)])
    output = tmp_path / "out" / "disk.qcow2"
    output.parent.mkdir()

    done = _run(
        [str(worker_install.bin("hyper2kvm-worker")), "convert", str(vmdk), str(output)],
        cwd=tmp_path,
    )

    assert "verified" in done.stdout, done.stdout
    info = _run(["qemu-img", "info", "--output=json", str(output)])
    assert '"format": "qcow2"' in info.stdout
    _run(["qemu-img", "compare", "-f", "vmdk", "-F", "qcow2", str(vmdk), str(output)])
    _run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(output)])


def test_operator_image_recipe_installs_the_extra(tmp_path: Path) -> None:
    install = _install("operator", tmp_path)
    done = _run([str(install.bin("hyper2kvm-operator")), "--help"])
    assert done.stdout.startswith("usage: hyper2kvm-operator")
    _run([str(install.bin("python")), "-c", "import hyper2kvm_operator.handlers, kopf"])
    assert not install.bin("pip").exists()
