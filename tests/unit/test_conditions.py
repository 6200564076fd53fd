from __future__ import annotations

from hyper2kvm_operator.conditions import find, set_condition


def test_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Ready", False, "Queued", "waiting", "t1", 1)
    same = set_condition(first, "Ready", False, "Running", "converting", "t2", 2)
    flipped = set_condition(same, "Ready", True, "Completed", "done", "t3", 2)

    assert find(first, "Ready") == {
        "type": "Ready",
        "status": "False",
        "reason": "Queued",
        "message": "waiting",
        "lastTransitionTime": "t1",
        "observedGeneration": 1,
    }
    ready = find(same, "Ready")
    assert ready is not None
    assert (ready["lastTransitionTime"], ready["reason"], ready["observedGeneration"]) == (
        "t1",
        "Running",
        2,
    )
    done = find(flipped, "Ready")
    assert done is not None and done["lastTransitionTime"] == "t3"


def test_other_conditions_are_kept() -> None:
    both = set_condition(
        set_condition([], "A", True, "r", "", "t1", None), "B", True, "r", "", "t2", None
    )
    assert [c["type"] for c in both] == ["A", "B"]
    assert "observedGeneration" not in both[0]
