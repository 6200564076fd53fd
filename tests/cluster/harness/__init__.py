"""A real local Kubernetes control plane and a process-based node agent for the cluster tests.

See tests/cluster/README.md for what runs, where its state lives and how to use it by hand.
"""

from tests.cluster.harness.controlplane import ControlPlane, default_bin_dir
from tests.cluster.harness.node_agent import NodeAgent

__all__ = ["ControlPlane", "NodeAgent", "default_bin_dir"]
