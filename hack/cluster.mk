# Local Kubernetes control plane for the cluster tests and the demo (see tests/cluster/README.md).
# Included from the main Makefile, which defines PYTHON and exports HYPER2KVM_CACHE.

CLUSTER_STATE ?= $(HYPER2KVM_CACHE)/cluster

.PHONY: cluster-binaries vcsim cluster-up cluster-down

cluster-binaries: ## build the control plane, kubelet, kube-proxy, containerd and the images once (cached)
	@# The images (mostly downloads from Debian and PyPI) build while Go compiles.
	@hack/images.sh >/dev/null & images=$$!; \
	  hack/k8s/build.sh >/dev/null && hack/node/build.sh >/dev/null; built=$$?; \
	  wait $$images && exit $$built

vcsim: ## build VMware's vCenter simulator and govc from govmomi once (cached), for the vSphere tests
	@hack/vcsim/build.sh >/dev/null

cluster-up: cluster-binaries venv ## start a local cluster in the background; prints its KUBECONFIG
	@PYTHON=$(PYTHON) hack/cluster.sh up $(CLUSTER_STATE)

cluster-down: ## stop the cluster started by cluster-up
	@PYTHON=$(PYTHON) hack/cluster.sh down $(CLUSTER_STATE)
