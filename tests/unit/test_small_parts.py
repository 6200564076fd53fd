from __future__ import annotations

import logging

import pytest

from hyper2kvm_operator.main import QuietRoutineSuccess
from hyper2kvm_worker.digest import directly_readable
from hyper2kvm_worker.qemu_img import MapEntry
from hyper2kvm_worker.status_server import parse_listen


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("0.0.0.0:8081", ("0.0.0.0", 8081)),
        (":9000", ("0.0.0.0", 9000)),
        ("[::1]:80", ("::1", 80)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_parse_listen(value: str, address: tuple[str, int]) -> None:
    assert parse_listen(value) == address


@pytest.mark.parametrize("value", ["localhost", "host:http", "host:70000"])
def test_parse_listen_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(value)


def entry(*, data: bool, zero: bool, offset: int | None, depth: int = 0) -> MapEntry:
    return MapEntry(start=0, length=512, data=data, zero=zero, depth=depth, offset=offset)


def test_direct_reads_only_when_qemu_says_where_every_byte_is() -> None:
    assert directly_readable(
        [entry(data=True, zero=False, offset=0), entry(data=False, zero=True, offset=None)]
    )
    # Compressed grains have no offset; parents' data lives in other files.
    assert not directly_readable([entry(data=True, zero=False, offset=None)])
    assert not directly_readable([entry(data=True, zero=False, offset=0, depth=1)])


def test_operator_logs_drop_only_routine_successes() -> None:
    def passes(level: int, msg: str) -> bool:
        record = logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None)
        return QuietRoutineSuccess().filter(record)

    assert not passes(logging.INFO, "Timer 'place' succeeded.")
    assert not passes(logging.INFO, "Indexer 'worker_pods' succeeded.")
    assert passes(logging.ERROR, "Handler 'admit' failed with an exception. Will retry.")
    assert passes(logging.INFO, "h2k/web01 attempt ended: exit 0")
    assert passes(logging.INFO, "Handler 'admit' succeeded. Extra words")
