"""The sources package's shape: one driver per kind of source in the protocol, each in a
module of its own, and the raw reading of a flat extent decided by name, never by content."""

from __future__ import annotations

import typing

from hyper2kvm_worker.protocol import Source
from hyper2kvm_worker.sources import DRIVERS
from hyper2kvm_worker.sources.base import default_format


def test_every_kind_of_source_has_its_own_driver_module() -> None:
    union = typing.get_args(Source)[0]
    kinds = {model.model_fields["kind"].default for model in typing.get_args(union)}
    assert kinds == set(DRIVERS)
    for kind, driver in DRIVERS.items():
        assert driver.kind == kind
        assert type(driver).__module__ == f"hyper2kvm_worker.sources.{kind}"


def test_a_flat_extent_is_raw_by_its_name_and_a_format_said_wins() -> None:
    assert default_format("/vmfs/volumes/ds/vm/vm-flat.vmdk", None) == "raw"
    assert default_format("vm/VM-FLAT.VMDK", None) == "raw"
    assert default_format("vm/vm.vmdk", None) == "vmdk"
    assert default_format("vm/vm-flat.vmdk", "vmdk") == "vmdk"
