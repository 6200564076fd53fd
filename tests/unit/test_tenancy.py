"""The admins' policy: what a tenant's job may ask for, and how a broken rule is named."""

from __future__ import annotations

from typing import Any

import pytest

from hyper2kvm_operator import network_policy, placement, tenancy, worker_job, worker_pod
from hyper2kvm_operator.api import MigrationJobSpec
from hyper2kvm_operator.tenancy import HostPathGrant, Policy, PolicyError


def spec(**fields: Any) -> MigrationJobSpec:
    disk = {
        "name": "disk0",
        "source": {"pvc": {"claimName": "in", "path": "vm/disk.vmdk"}},
        "output": {"pvc": {"claimName": "out"}, "path": "vm/disk.qcow2"},
    }
    return MigrationJobSpec.model_validate({"operation": "convert", "disks": [disk], **fields})


def host_spec(source: str, output: str) -> MigrationJobSpec:
    disk = {
        "name": "disk0",
        "source": {"hostPath": {"path": source}},
        "output": {"hostPath": {"path": output}, "path": "disk.qcow2"},
    }
    return MigrationJobSpec.model_validate({"operation": "convert", "disks": [disk]})


def rules(namespace: str, job: MigrationJobSpec, policy: Policy) -> list[str]:
    return [v.rule for v in tenancy.violations(namespace, job, policy)]


def test_a_job_on_claims_within_the_ceilings_breaks_nothing() -> None:
    assert tenancy.violations("team-a", spec(), Policy()) == []


def test_host_paths_are_off_unless_an_admin_grants_them() -> None:
    found = tenancy.violations("team-a", host_spec("/exports/a.vmdk", "/srv/out"), Policy())
    assert [v.rule for v in found] == ["hostPaths", "hostPaths"]
    assert "hostPath is off for team-a (policy.hostPaths)" in str(found[0])


def test_a_grant_covers_its_prefix_its_namespaces_and_writes_only_when_it_says() -> None:
    policy = Policy(
        host_paths=(
            HostPathGrant("/exports", frozenset({"team-a"})),
            HostPathGrant("/srv/kvm/team-a", frozenset({"team-a"}), write=True),
        )
    )
    assert rules("team-a", host_spec("/exports/vm/a.vmdk", "/srv/kvm/team-a"), policy) == []
    # Another tenant, a sibling prefix, a climb out with .., writing to a read-only grant:
    assert rules("team-b", host_spec("/exports/vm/a.vmdk", "/srv/kvm/team-a"), policy) == [
        "hostPaths",
        "hostPaths",
    ]
    assert rules("team-a", host_spec("/exports-other/a.vmdk", "/srv/kvm/team-a"), policy) == [
        "hostPaths"
    ]
    # The API server refuses "..", but the check does not lean on it: paths are normalised.
    assert rules("team-a", host_spec("/exports/../etc/shadow", "/srv/kvm/team-a"), policy) == [
        "hostPaths"
    ]
    assert rules("team-a", host_spec("/exports/vm/a.vmdk", "/exports/out"), policy) == ["hostPaths"]


def test_ceilings_name_their_rule() -> None:
    policy = Policy(max_priority=10, max_timeout_seconds=3600)
    job = spec(
        priority=50,
        timeoutSeconds=7200,
        resources={"limits": {"memory": "64Gi", "cpu": "2"}, "requests": {"cpu": "16"}},
    )
    found = tenancy.violations("team-a", job, policy)
    assert [v.rule for v in found] == [
        "maxPriority",
        "maxTimeoutSeconds",
        "maxResources",
        "maxResources",
    ]
    assert "resources.requests.cpu 16 is above this cluster's 4" in str(found[2])
    assert "resources.limits.memory 64Gi is above this cluster's 8Gi" in str(found[3])
    assert str(found[0]).endswith("(policy.maxPriority)")


def test_a_policy_document_from_the_chart() -> None:
    policy = Policy.from_json(
        '{"hostPaths": [{"prefix": "/exports/", "namespaces": ["a"]}, '
        '{"prefix": "/srv/kvm", "write": true}], "privilegedFixNamespaces": ["kvm"], '
        '"maxVirtualSize": "2Ti", "namespaceSlots": 2, "namespaceSlotOverrides": {"big": 8}, '
        '"http": {"denyNetworks": ["10.96.0.0/12"]}}'
    )
    assert policy.host_paths[0] == HostPathGrant("/exports", frozenset({"a"}))
    assert policy.host_paths[1].write and "*" in policy.host_paths[1].namespaces
    assert policy.privileged_fix("kvm") and not policy.privileged_fix("a")
    assert policy.max_virtual_size == 2 << 40
    assert (policy.slots_for("a"), policy.slots_for("big")) == (2, 8)
    assert "169.254.0.0/16" in policy.http_deny and "10.96.0.0/12" in policy.http_deny
    assert Policy.from_json("") == Policy()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[]", "must be a JSON object"),
        ("{", "is not JSON"),
        ('{"hostPaths": [{"prefix": "/"}]}', "not /"),
        ('{"hostPaths": [{"prefix": "relative"}]}', "an absolute folder"),
        ('{"http": {"denyNetworks": ["not-a-network"]}}', "not-a-network"),
    ],
)
def test_a_wrong_policy_document_is_refused_at_start_up(text: str, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        Policy.from_json(text)


def test_the_worker_gets_the_limits_only_it_can_check() -> None:
    policy = Policy(max_virtual_size=1 << 40, http_deny=("10.0.0.0/8",))
    limits = worker_job.plan("ns/web01", spec(), policy).job.limits
    assert limits.max_virtual_size == 1 << 40
    assert limits.http_deny == ["10.0.0.0/8"]


def test_one_namespace_cannot_take_every_slot() -> None:
    nodes = [placement.WorkerNode("n1", {}, slots=4), placement.WorkerNode("n2", {}, slots=4)]
    queue = [
        placement.QueuedJob(f"greedy/job{i}", priority=10, queued_at=f"t{i}") for i in range(6)
    ] + [placement.QueuedJob("polite/job", priority=0, queued_at="t9")]
    chosen = placement.place(queue, nodes, {}, {"greedy": 1}, lambda ns: 3 if ns == "greedy" else 0)
    keys = [job.key for job, _ in chosen]
    assert keys == ["greedy/job0", "greedy/job1", "polite/job"]  # 1 running + 2 = its 3
    why = placement.why_waiting(queue[3], nodes, namespace_active={"greedy": 3},
                                namespace_slots=lambda _: 3)  # fmt: skip
    assert why == "namespace greedy has 3 jobs running, its limit (policy.namespaceSlots)"


def test_children_of_a_long_job_name_are_valid_and_distinct() -> None:
    long_a, long_b = "a" * 200 + "-x", "a" * 200 + "-y"
    names = {worker_pod.pod_name(long_a, 1), worker_pod.pod_name(long_b, 1)}
    assert len(names) == 2
    for job in (long_a, long_b):
        for name in (worker_pod.pod_name(job, 12), worker_pod.configmap_name(job, 12)):
            assert len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
        assert worker_pod.pod_name(job, 3) == worker_pod.pod_name(job, 3)  # deterministic
    assert worker_pod.pod_name("web01", 2) == "web01-2"  # short names stay as they are


def test_the_clusters_own_ranges_are_denied_to_http_sources_and_their_egress() -> None:
    rules = Policy(http_allow=("10.0.0.0/8",)).denying(["10.96.0.0/12", "10.244.1.0/24"])
    assert rules.denying(["10.96.0.0/12"]) is rules  # nothing new: the same policy
    limits = worker_job.plan("ns/web", spec(), rules).job.limits
    assert {"10.96.0.0/12", "10.244.1.0/24", "169.254.0.0/16"} <= set(limits.http_deny)
    (block,) = network_policy.egress_blocks(rules)
    assert block["ipBlock"] == {"cidr": "10.0.0.0/8", "except": ["10.244.1.0/24", "10.96.0.0/12"]}


def test_only_a_secret_its_owner_marked_may_be_used() -> None:
    label = "hyper2kvm.io/credentials"
    assert tenancy.unmarked_secret("db", "team-a", None, label, "for x") == (
        "Secret db does not exist in namespace team-a"
    )
    refusal = tenancy.unmarked_secret("db", "team-a", {label: "yes"}, label, "for x")
    assert refusal.startswith("Secret db is not marked for migrations: label it")
    assert refusal.endswith("(policy.credentialLabel) for x")
    assert tenancy.unmarked_secret("db", "team-a", {label: "true"}, label, "for x") == ""
