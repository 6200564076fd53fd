from __future__ import annotations

from hyper2kvm_operator.placement import (
    QueuedJob,
    Scope,
    SourceLimits,
    WaitingReasons,
    WorkerNode,
    free_slots,
    is_worker,
    node_slots,
    place,
    plan_scope,
    queue_order,
    waiting_signature,
    why_waiting,
)


def node(name: str, slots: int = 2, **labels: str) -> WorkerNode:
    return WorkerNode(name=name, labels={"hyper2kvm.io/worker": "true", **labels}, slots=slots)


def job(
    key: str, priority: int = 0, at: str = "2026-01-01T00:00:00Z", **selector: str
) -> QueuedJob:
    return QueuedJob(key=key, priority=priority, queued_at=at, node_selector=selector)


def test_queue_order_is_priority_then_age_then_name() -> None:
    jobs = [
        job("ns/old-low", 0, "2026-01-01T00:00:00Z"),
        job("ns/new-high", 5, "2026-01-02T00:00:00Z"),
        job("ns/b-same", 0, "2026-01-01T00:00:00Z"),
        job("ns/old-high", 5, "2026-01-01T00:00:00Z"),
    ]
    assert [j.key for j in queue_order(jobs)] == [
        "ns/old-high",
        "ns/new-high",
        "ns/b-same",
        "ns/old-low",
    ]


def test_least_loaded_node_and_never_more_than_its_slots() -> None:
    nodes = [node("a", slots=2), node("b", slots=2)]
    queue = [job(f"ns/j{i}", at=f"2026-01-01T00:00:0{i}Z") for i in range(6)]

    placements = place(queue, nodes, active={"a": 1})

    assert [(j.key, n.name) for j, n in placements] == [
        ("ns/j0", "b"),
        ("ns/j1", "a"),
        ("ns/j2", "b"),
    ]


def test_a_job_that_fits_nowhere_does_not_block_others() -> None:
    nodes = [node("a", slots=1, disk="ssd"), node("b", slots=1)]
    queue = [job("ns/gpu", 9, gpu="yes"), job("ns/any", 0)]
    assert [(j.key, n.name) for j, n in place(queue, nodes, {})] == [("ns/any", "a")]
    assert "matches nodeSelector {'gpu': 'yes'}" in why_waiting(queue[0], nodes)


def test_unready_and_cordoned_nodes_take_nothing() -> None:
    nodes = [
        WorkerNode("down", {"hyper2kvm.io/worker": "true"}, slots=4, ready=False),
        WorkerNode("cordoned", {"hyper2kvm.io/worker": "true"}, slots=4, unschedulable=True),
    ]
    assert place([job("ns/x")], nodes, {}) == []
    assert "no ready node" in why_waiting(job("ns/x"), nodes)


def test_full_nodes_explain_themselves() -> None:
    nodes = [node("a", slots=1)]
    assert place([job("ns/x")], nodes, {"a": 1}) == []
    assert why_waiting(job("ns/x"), nodes) == "all 1 slots on 1 eligible nodes are busy"


def test_slot_count_from_label_then_annotation_then_default() -> None:
    assert node_slots({"hyper2kvm.io/slots": "7"}, {"hyper2kvm.io/slots": "3"}, 2) == 7
    assert node_slots({}, {"hyper2kvm.io/slots": "3"}, 2) == 3
    assert node_slots({"hyper2kvm.io/slots": "many"}, {}, 2) == 2
    assert is_worker({"hyper2kvm.io/worker": "true"})
    assert not is_worker({"hyper2kvm.io/worker": "false"})


def test_free_slots_count_only_usable_nodes_and_never_below_zero() -> None:
    cordoned = WorkerNode("c", {}, slots=4, unschedulable=True)
    nodes = [node("a", slots=2), node("b", slots=1), cordoned]
    assert free_slots(nodes, {"a": 1, "b": 3}) == 1
    assert free_slots(nodes, {"a": 2, "b": 1}) == 0


def test_a_pass_plans_nothing_without_a_free_slot_and_only_new_jobs_when_nothing_else_changed() -> (
    None
):
    assert plan_scope(0, inputs_changed=True, due=True, changed_jobs=True) is Scope.NONE
    assert plan_scope(2, inputs_changed=True, due=False, changed_jobs=False) is Scope.ALL
    assert plan_scope(2, inputs_changed=False, due=True, changed_jobs=False) is Scope.ALL
    assert plan_scope(2, inputs_changed=False, due=False, changed_jobs=True) is Scope.NEW
    assert plan_scope(2, inputs_changed=False, due=False, changed_jobs=False) is Scope.NONE


def test_jobs_a_plan_left_waiting_still_wait_once_new_jobs_join() -> None:
    """Why planning over the new jobs alone is enough: with the same load, jobs no plan
    could place before (a selector nothing matches, a namespace at its limit) still cannot."""
    nodes = [node("a", slots=2)]
    limits = {"full": 1}.get
    old = [job("ns/gpu", 5, gpu="yes"), job("full/second")]
    assert place(old, nodes, {"a": 1}, {"full": 1}, lambda ns: limits(ns, 0)) == []
    new = [job("ns/fresh", 0, "2026-01-02T00:00:00Z")]
    together = place(old + new, nodes, {"a": 1}, {"full": 1}, lambda ns: limits(ns, 0))
    alone = place(new, nodes, {"a": 1}, {"full": 1}, lambda ns: limits(ns, 0))
    assert together == alone == [(new[0], nodes[0])]


def test_waiting_reasons_change_only_with_nodes_and_limits_reached() -> None:
    nodes = [node("a", slots=2)]
    hosts = SourceLimits(active={"ns/p/esx1": 1}, limit=lambda _: 2)

    def signature(
        workers: list[WorkerNode], namespaces: dict[str, int], sources: SourceLimits = hosts
    ) -> tuple[object, ...]:
        return waiting_signature(workers, namespaces, lambda ns: 2 if ns == "team" else 0, sources)

    base = signature(nodes, {"team": 1, "other": 7})
    assert signature(nodes, {"team": 1, "other": 9}) == base  # no limit on "other"
    assert signature(nodes, {"team": 2, "other": 7}) != base  # "team" reached its limit
    assert signature([node("a", slots=3)], {"team": 1, "other": 7}) != base
    full = SourceLimits(active={"ns/p/esx1": 2}, limit=lambda _: 2)
    assert signature(nodes, {"team": 1, "other": 7}, full) != base


def test_waiting_reasons_are_those_of_why_waiting() -> None:
    nodes = [node("a", slots=1), node("b", slots=1, disk="ssd")]
    jobs = [job("ns/x"), job("ns/y"), job("ns/z", disk="ssd"), job("ns/w", gpu="yes")]
    reasons = WaitingReasons(nodes, "hyper2kvm.io/worker", {}, lambda _: 0, SourceLimits())
    assert [reasons.of(j) for j in jobs] == [why_waiting(j, nodes) for j in jobs]
