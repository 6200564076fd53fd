"""A real local Kubernetes cluster for the cluster tests: control plane and real nodes.

See tests/cluster/README.md for what runs, where its state lives and how to use it by hand.
"""

from tests.cluster.harness.cluster import LocalCluster
from tests.cluster.harness.controlplane import ControlPlane, default_bin_dir

__all__ = ["ControlPlane", "LocalCluster", "default_bin_dir"]
