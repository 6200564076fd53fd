"""The operator's pure builders: worker job plan, worker Pod, status rendering, policy."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from hyper2kvm_operator import policy, status, worker_job, worker_pod
from hyper2kvm_operator.api import MigrationJobSpec, Phase
from hyper2kvm_operator.settings import Settings
from hyper2kvm_operator.tenancy import Policy
from hyper2kvm_worker.protocol import (
    DiskProgress,
    DiskResult,
    JobState,
    Progress,
    Result,
    Transition,
)

BODY = {"metadata": {"name": "web01", "namespace": "vms", "uid": "1234", "generation": 1}}


def spec(**overrides: Any) -> MigrationJobSpec:
    data: dict[str, Any] = {
        "operation": "convert",
        "disks": [
            {
                "name": "boot",
                "source": {"pvc": {"claimName": "vmware", "path": "web/web.vmdk"}},
                "output": {"pvc": {"claimName": "kvm"}, "path": "web/boot.qcow2"},
            },
            {
                "name": "data",
                "source": {"pvc": {"claimName": "vmware", "path": "web/data.vmdk"}},
                "output": {"hostPath": {"path": "/srv/kvm"}, "path": "data.raw", "format": "raw"},
            },
            {
                "name": "iso",
                "source": {"http": {"url": "https://h/x.vmdk", "secretRef": {"name": "creds"}}},
                "output": {"pvc": {"claimName": "vmware"}, "path": "out/x.qcow2"},
            },
        ],
    }
    data.update(overrides)
    return MigrationJobSpec.model_validate(data)


def test_plan_mounts_each_volume_once_and_writable_only_when_written() -> None:
    plan = worker_job.plan("vms/web01", spec())
    volumes = {(v.claim_name or v.host_path): v for v in plan.volumes}
    assert set(volumes) == {"vmware", "kvm", "/srv/kvm"}
    assert volumes["vmware"].read_only is False  # an output shares the source volume
    assert volumes["kvm"].read_only is False
    boot, data, iso = plan.job.disks
    assert boot.source.root == volumes["vmware"].mount_path  # type: ignore[union-attr]
    assert boot.source.path == "web/web.vmdk"  # type: ignore[union-attr]
    assert data.output is not None and data.output.format.value == "raw"
    assert iso.source.password_file == "/secrets/creds/password"  # type: ignore[union-attr]
    assert plan.secrets == ("creds",)


def test_an_esxi_disk_over_ssh_gets_the_key_and_pinned_host_key_of_its_secret() -> None:
    esxi = {
        "name": "esxi",
        "source": {
            "ssh": {
                "host": "esx1.example.com",
                "path": "/vmfs/volumes/ds1/web/web-flat.vmdk",
                "secretRef": {"name": "creds"},
            }
        },
        "output": {"pvc": {"claimName": "kvm"}, "path": "web/esxi.qcow2"},
    }
    plan = worker_job.plan("vms/web01", spec(disks=[*spec().model_dump()["disks"][2:], esxi]))
    assert plan.secrets == ("creds",)  # one Secret for both sources, mounted once
    source = plan.job.disks[1].source.model_dump(exclude_none=True)
    assert source == {
        "kind": "ssh",
        "host": "esx1.example.com",
        "port": 22,
        "user": "root",
        "path": "/vmfs/volumes/ds1/web/web-flat.vmdk",
        "identity_file": "/secrets/creds/identity",
        "known_hosts_file": "/secrets/creds/known_hosts",
    }


def test_host_path_sources_mount_their_directory_read_only() -> None:
    disk = {
        "name": "a",
        "source": {"hostPath": {"path": "/srv/vm/a.vmdk"}},
        "output": {"hostPath": {"path": "/srv/out"}, "path": "a.qcow2"},
    }
    one = spec(disks=[disk])
    plan = worker_job.plan("vms/x", one)
    source_volume = next(v for v in plan.volumes if v.host_path == "/srv/vm")
    assert source_volume.read_only is True
    assert plan.job.disks[0].source.path == "a.vmdk"  # type: ignore[union-attr]


def test_worker_pod_is_pinned_unprivileged_and_owned() -> None:
    job_spec = spec()
    plan = worker_job.plan("vms/web01", job_spec)
    pod = worker_pod.worker_pod(BODY, job_spec, 2, "node-a", plan, Settings())
    assert pod["metadata"]["name"] == "web01-2"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "1234"
    assert pod["metadata"]["labels"]["hyper2kvm.io/node"] == "node-a"
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-a"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Fresh claims become writable for the worker's group.
    assert pod["spec"]["securityContext"]["fsGroup"] == container["securityContext"]["runAsUser"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/hyper2kvm"]["readOnly"] is True
    assert "--listen" in container["args"]
    configmap = worker_pod.job_configmap(BODY, 2, plan)
    assert configmap["metadata"]["name"] == "web01-2-job"
    assert '"name":"vms/web01"' in configmap["data"]["job.json"]


def test_only_offline_fix_may_be_privileged_and_only_in_the_namespaces_allowed() -> None:
    fix = spec(operation="offline_fix")
    assert "privileged" not in worker_pod.security_context(fix.operation, "vms", Settings())
    allowed = Settings(policy=Policy(privileged_fix_namespaces=frozenset({"vms"})))
    assert worker_pod.security_context(fix.operation, "vms", allowed) == {
        "privileged": True,
        "runAsUser": 0,
        "runAsNonRoot": False,
    }
    assert "privileged" not in worker_pod.security_context(fix.operation, "other", allowed)
    assert "privileged" not in worker_pod.security_context(spec().operation, "vms", allowed)
    everywhere = Settings(policy=Policy(privileged_fix_namespaces=frozenset({"*"})))
    assert worker_pod.security_context(fix.operation, "other", everywhere)["privileged"]


def test_transition_keeps_a_bounded_history_and_sets_conditions() -> None:
    state: dict[str, Any] = {}
    for index, phase in enumerate([Phase.QUEUED, Phase.SCHEDULED, Phase.RUNNING]):
        state.update(status.transition(state, phase, f"t{index}", 3, phase.value, history_limit=2))
    assert [h["phase"] for h in state["history"]] == ["Scheduled", "Running"]
    conditions = {c["type"]: c for c in state["conditions"]}
    assert conditions["Progressing"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    again = status.transition(state, Phase.RUNNING, "t9", 3, "Running")
    assert "history" not in again  # the same phase again adds no entry
    done = status.transition(state, Phase.SUCCEEDED, "t10", 3, "Completed")
    final = {c["type"]: c["status"] for c in done["conditions"]}
    assert final == {
        "Ready": "True",
        "Succeeded": "True",
        "Failed": "False",
        "Progressing": "False",
    }
    assert done["completionTime"] == "t10"


def test_progress_fields() -> None:
    progress = Progress(
        state=JobState.VERIFYING,
        percent=42.7,
        bytes_done=42,
        bytes_total=100,
        rate_bytes_per_second=3 * 1024 * 1024,
        eta_seconds=200,
        disks=[DiskProgress(name="boot", phase="verifying", bytes_done=42, bytes_total=100)],
    )
    fields = status.progress_fields(progress)
    assert (fields["progress"], fields["throughput"], fields["eta"]) == (
        "42%",
        "3.0 MiB/s",
        "3m20s",
    )
    assert status.worker_phase(progress) is Phase.VERIFYING


def test_worker_history_fills_in_phases_polling_missed() -> None:
    history = [
        {"phase": "Queued", "time": "2026-01-01T00:00:00.000Z"},
        {"phase": "Scheduled", "time": "2026-01-01T00:00:01.000Z"},
        {"phase": "Running", "time": "2026-01-01T00:00:02.000Z"},
    ]
    result = Result(
        job="j",
        state=JobState.SUCCEEDED,
        history=[
            Transition(state=JobState.RUNNING, time=1767225601.5),
            Transition(state=JobState.VERIFYING, time=1767225603.0),
        ],
    )

    def fmt(epoch: float) -> str:
        return policy.format_time(datetime.fromtimestamp(epoch, UTC))

    merged = status.worker_history(history, result, fmt)
    assert [h["phase"] for h in merged] == ["Queued", "Scheduled", "Running", "Verifying"]
    assert merged[-1] == {
        "phase": "Verifying",
        "time": "2026-01-01T00:00:03.000Z",
        "reason": "ReportedByWorker",
    }


def test_result_fields_use_the_users_terms_for_outputs() -> None:
    result = Result(
        job="j",
        state=JobState.SUCCEEDED,
        disks=[
            DiskResult(
                name="boot",
                output="/volumes/vol-1/web/boot.qcow2",
                digest="blake3:ab",
                verified=True,
            ),
        ],
    )
    where = status.output_locations("web01", spec(), {})
    assert where == {
        "boot": "pvc:kvm/web/boot.qcow2",
        "data": "/srv/kvm/data.raw",
        "iso": "pvc:vmware/out/x.qcow2",
    }
    fields = status.result_fields(result, where)
    assert fields["disks"][0]["output"] == "pvc:kvm/web/boot.qcow2"
    assert fields["progress"] == "100%"


def test_a_vms_disks_are_found_where_the_naming_rule_or_the_claims_put_them() -> None:
    vm = {"name": "web 01", "disks": [{"name": "disk-1", "capacityBytes": 1 << 30},
                                      {"name": "disk-2", "capacityBytes": 3 << 30}]}  # fmt: skip
    source = {"vsphere": {"provider": "vc", "vm": {"name": "web 01"}}}
    files = MigrationJobSpec.model_validate(
        {
            "operation": "convert",
            "source": source,
            "output": {"hostPath": {"path": "/srv/kvm"}, "format": "raw"},
        }
    )
    assert status.output_locations("web01", files, vm) == {
        "disk-1": "/srv/kvm/web-01-disk-1.raw",
        "disk-2": "/srv/kvm/web-01-disk-2.raw",
    }
    into_claims = MigrationJobSpec.model_validate(
        {
            "operation": "convert",
            "source": source,
            "output": {
                "claim": {"create": {"volumeMode": "Block", "storageClassName": "fast"}},
                "format": "raw",
            },
        }
    )
    assert status.output_locations("web01", into_claims, vm) == {
        "disk-1": "claim:web01-disk-1",
        "disk-2": "claim:web01-disk-2",
    }


def test_policy() -> None:
    assert policy.classify(0) is policy.Outcome.SUCCEEDED
    assert policy.classify(3) is policy.Outcome.PERMANENT
    assert policy.classify(75) is policy.Outcome.TRANSIENT
    assert policy.classify(137) is policy.Outcome.TRANSIENT  # killed: a retry may pass
    # Killed at its memory limit: the same limit kills it again.
    assert policy.classify(137, "OOMKilled") is policy.Outcome.PERMANENT
    assert "limit of 64Mi" in policy.oom_message("64Mi")
    assert policy.classify(143) is policy.Outcome.CANCELLED
    rng = random.Random(7)
    delays = [policy.backoff_seconds(n, 10, 60, rng) for n in (1, 2, 3, 4, 5)]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and 30 <= delays[4] <= 60
    now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert policy.timed_out("2026-01-01T00:00:00.000Z", 60, now)
    assert not policy.timed_out("2026-01-01T00:00:00.000Z", 61, now)
    assert not policy.timed_out(None, 1, now)
    assert policy.format_time(now) == "2026-01-01T00:01:00.000Z"


def test_fix_options_reach_the_worker_job() -> None:
    fix = spec(
        operation="offline_fix",
        fix={
            "dryRun": True,
            "firstbootScript": "#!/bin/sh\ntrue\n",
            "cloudInit": {"userData": "#cloud-config\n"},
        },
    )
    job = worker_job.plan("vms/web01", fix).job
    assert job.operation.value == "offline_fix"
    assert job.fix.dry_run is True
    assert job.fix.firstboot_script == "#!/bin/sh\ntrue\n"
    assert job.fix.cloud_init is not None and job.fix.cloud_init.user_data == "#cloud-config\n"
    pod = worker_pod.worker_pod(BODY, fix, 1, "n", worker_job.plan("vms/web01", fix), Settings())
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "4Gi"


def test_parallel_disks_and_free_space_reach_the_worker_job_and_come_back() -> None:
    job = worker_job.plan("vms/web01", spec(parallelDisks=4, skipFreeSpace=True)).job
    assert (job.parallel_disks, job.skip_free_space) == (4, True)
    default = worker_job.plan("vms/web01", spec()).job
    assert (default.parallel_disks, default.skip_free_space) == (None, False)
    result = Result(
        job="j",
        state=JobState.SUCCEEDED,
        disks=[DiskResult(name="boot", digest="blake3:ab", free_space_zeroed=3 << 30)],
    )
    assert status.result_fields(result, {})["disks"][0]["freeSpaceZeroed"] == 3 << 30
    # libguestfs' appliance runs in the Pod to find the free space: the memory of a fix
    trimming = spec(skipFreeSpace=True)
    plan = worker_job.plan("vms/web01", trimming)
    pod = worker_pod.worker_pod(BODY, trimming, 1, "n", plan, Settings())
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "4Gi"


def test_scratch_is_a_shared_claim_a_claim_per_pod_or_node_disk() -> None:
    assert worker_pod.scratch_volume(Settings()) == {"emptyDir": {"sizeLimit": "10Gi"}}
    shared = Settings(scratch_claim="scratch", scratch_size="50Gi")
    assert worker_pod.scratch_volume(shared) == {"persistentVolumeClaim": {"claimName": "scratch"}}
    own = worker_pod.scratch_volume(Settings(scratch_size="50Gi", scratch_storage_class="nvme"))
    claim = own["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "nvme",
    }


def test_settings_read_worker_resources_and_node_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPER2KVM_WORKER_REQUESTS", '{"cpu": "2", "memory": "1Gi"}')
    monkeypatch.setenv("HYPER2KVM_WORKER_LIMITS", '{"memory": "8Gi"}')
    monkeypatch.setenv("HYPER2KVM_NODE_LABEL", "example.com/v2v")
    settings = Settings.from_environment()
    assert settings.node_label == "example.com/v2v"
    resources = worker_pod.resources(spec(), settings)
    assert resources == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "8Gi"}}
    monkeypatch.setenv("HYPER2KVM_WORKER_LIMITS", '["8Gi"]')
    with pytest.raises(ValueError, match="HYPER2KVM_WORKER_LIMITS must be a JSON object"):
        Settings.from_environment()


def test_chart_wide_worker_tolerations_pull_secrets_and_policy() -> None:
    chart = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    settings = Settings(
        worker_tolerations=(chart,), worker_pull_secrets=("regcred",), worker_pull_policy="Always"
    )
    job_spec = spec(
        placement={"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    )
    plan = worker_job.plan("vms/web01", job_spec)
    pod = worker_pod.worker_pod(BODY, job_spec, 1, "node-a", plan, settings)["spec"]
    assert pod["tolerations"] == [
        chart,
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    plain = worker_pod.worker_pod(
        BODY, spec(), 1, "node-a", worker_job.plan("vms/x", spec()), Settings()
    )
    assert "imagePullSecrets" not in plain["spec"] and plain["spec"]["tolerations"] == []
    assert "imagePullPolicy" not in plain["spec"]["containers"][0]
