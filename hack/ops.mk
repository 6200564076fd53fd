# Running hyper2kvm on a cluster: every target works against $KUBECONFIG (or kubectl's
# current context). Included from the main Makefile.

RELEASE   ?= hyper2kvm
NAMESPACE ?= hyper2kvm-system
# Extra `helm upgrade --install` arguments, e.g. VALUES=my-values.yaml or HELM_ARGS="--set ..."
VALUES    ?=
HELM_ARGS ?=
OPS       := RELEASE=$(RELEASE) NAMESPACE=$(NAMESPACE) hack/ops.sh

.PHONY: chart-tools deploy undeploy label-nodes submit job-status job-events logs status capabilities images

chart-tools: ## build helm from its Go module and fetch the monitoring CRDs once (cached)
	@hack/tools/build.sh >/dev/null

deploy: ## apply the CRDs, then helm upgrade --install (RELEASE, NAMESPACE, VALUES=file, HELM_ARGS)
	@$(OPS) deploy $(if $(VALUES),--values $(VALUES)) $(HELM_ARGS)

undeploy: ## helm uninstall (CRDs, MigrationJobs and data claims stay)
	@$(OPS) undeploy

label-nodes: ## label NODES="a b" as worker nodes
	@$(OPS) label-nodes $(NODES)

submit: ## apply JOB=file.yaml and follow it until it ends
	@$(OPS) submit $(JOB)

job-status: ## phase, progress and conditions of JOB=name (NS=namespace)
	@$(OPS) job-status $(JOB) $(NS)

job-events: ## events of JOB=name and of its worker Pods (NS=namespace)
	@$(OPS) job-events $(JOB) $(NS)

logs: ## operator logs; with JOB=name, that job's worker logs (NS=namespace)
	@$(OPS) logs $(JOB) $(NS)

status: ## operator, CRD, worker nodes with free slots, jobs by phase
	@$(OPS) status

capabilities: ## the worker's capability report from every worker node
	@$(OPS) capabilities

images: ## build the images here with buildah, on a Debian base made here (IMAGE_PREFIX, VERSION)
	@hack/images.sh
	@hack/images.sh --sizes
