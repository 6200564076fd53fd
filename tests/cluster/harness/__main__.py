"""Run a local test cluster outside pytest.

python -m tests.cluster.harness up --state-dir DIR [--nodes N]
    network, control plane and N real nodes in the foreground until SIGTERM or SIGINT;
    DIR/kubeconfig is written and DIR/ready appears once every node is Ready.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from tests.cluster.harness.cluster import LocalCluster


def node_names(count: int) -> tuple[str, ...]:
    return tuple(f"hyper2kvm-node-{i}" for i in range(1, count + 1))


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def up(state_dir: Path, nodes: int) -> int:
    started = time.monotonic()
    ready = state_dir / "ready"
    ready.unlink(missing_ok=True)
    with LocalCluster(state_dir, nodes=node_names(nodes)) as cluster:
        ready.write_text(str(cluster.kubeconfig) + "\n")
        took = time.monotonic() - started
        print(f"cluster ready in {took:.1f}s; KUBECONFIG={cluster.kubeconfig}", flush=True)
        _wait_for_signal()
        ready.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.harness")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    return up(state_dir, args.nodes)


if __name__ == "__main__":
    sys.exit(main())
