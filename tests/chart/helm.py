"""The helm binary built by hack/tools/build.sh, and chart renders as parsed objects."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hyper2kvm"
# Every optional part of the chart switched on.
ALL_ON = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "grafana.dashboard.enabled=true",
    "storage.input.create=true",
    "storage.output.create=true",
    "storage.scratch.enabled=true",
    "storage.scratch.storageClassName=fast-local",
    "policy.privilegedFixNamespaces[0]=*",
    "operator.verbose=true",
)


@functools.cache
def helm_binary() -> Path:
    """helm from its Go module; the build script returns at once once it is cached."""
    done = subprocess.run(
        [str(ROOT / "hack" / "tools" / "build.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return Path(done.stdout.strip().splitlines()[-1]) / "bin" / "helm"


def render(*set_args: str, only: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`helm template test` of the chart in hyper2kvm-system, with each argument as --set.

    With `only`, just those templates (--show-only); [] when they render nothing.
    """
    argv = [str(helm_binary()), "template", "test", str(CHART), "--namespace", "hyper2kvm-system"]
    for template in only:
        argv += ["--show-only", template]
    for value in set_args:
        argv += ["--set", value]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        if only and "could not find template" in done.stderr:  # helm's word for empty
            return []
        raise AssertionError(f"helm template failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]
