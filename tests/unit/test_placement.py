from __future__ import annotations

from hyper2kvm_operator.placement import (
    QueuedJob,
    WorkerNode,
    is_worker,
    node_slots,
    place,
    queue_order,
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
