"""Run the harness outside pytest.

python -m tests.cluster.harness up --state-dir DIR [--nodes N]
    control plane + node agent in the foreground until SIGTERM or SIGINT; DIR/kubeconfig
    is written and DIR/ready appears once everything answers.
python -m tests.cluster.harness agent --state-dir DIR [--nodes N]
    only the node agent, against the cluster of $KUBECONFIG.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from tests.cluster.harness.controlplane import ControlPlane, ensure_binaries
from tests.cluster.harness.kube import api_client_from_kubeconfig
from tests.cluster.harness.node_agent import NodeAgent


def node_names(count: int) -> tuple[str, ...]:
    return tuple(f"hyper2kvm-node-{i}" for i in range(1, count + 1))


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def up(state_dir: Path, nodes: int) -> int:
    started = time.monotonic()
    bin_dir = ensure_binaries()
    ready = state_dir / "ready"
    ready.unlink(missing_ok=True)
    with ControlPlane(state_dir=state_dir, bin_dir=bin_dir) as plane:
        api = api_client_from_kubeconfig(str(plane.kubeconfig))
        with NodeAgent(api, state_dir / "agent", nodes=node_names(nodes)):
            ready.write_text(str(plane.kubeconfig) + "\n")
            took = time.monotonic() - started
            print(f"cluster ready in {took:.1f}s; KUBECONFIG={plane.kubeconfig}", flush=True)
            _wait_for_signal()
            ready.unlink(missing_ok=True)
    return 0


def agent(state_dir: Path, nodes: int) -> int:
    if not os.environ.get("KUBECONFIG"):
        print("agent: set KUBECONFIG to the cluster the nodes should join", file=sys.stderr)
        return 2
    api = api_client_from_kubeconfig()
    with NodeAgent(api, state_dir, nodes=node_names(nodes), default_storage_class=False):
        print(f"node agent running for {', '.join(node_names(nodes))}", flush=True)
        _wait_for_signal()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.harness")
    parser.add_argument("command", choices=["up", "agent"])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "up":
        return up(state_dir, args.nodes)
    return agent(state_dir, args.nodes)


if __name__ == "__main__":
    sys.exit(main())
