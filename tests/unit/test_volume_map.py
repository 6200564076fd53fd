from __future__ import annotations

import pytest

from hyper2kvm_worker import volume_map
from hyper2kvm_worker.protocol import Job

MAPPING = {"/volumes/vol-0": "/srv/a", "/volumes/vol-0/deep": "/srv/b", "/secrets/s": "/run/s"}


@pytest.mark.parametrize(
    ("path", "moved"),
    [
        ("/volumes/vol-0", "/srv/a"),
        ("/volumes/vol-0/x/y.vmdk", "/srv/a/x/y.vmdk"),
        ("/volumes/vol-0/deep/z", "/srv/b/z"),  # the longest container path wins
        ("/volumes/vol-01/z", "/volumes/vol-01/z"),  # a prefix of a name is not a parent
        ("/elsewhere", "/elsewhere"),
    ],
)
def test_translate_path(path: str, moved: str) -> None:
    assert volume_map.translate_path(path, MAPPING) == moved


def test_translate_a_job() -> None:
    job = Job.model_validate(
        {"name": "j", "operation": "convert", "disks": [
            {"name": "a", "source": {"kind": "file", "root": "/volumes/vol-0", "path": "a.vmdk"},
             "output": {"root": "/volumes/vol-0/deep", "path": "a.qcow2"}},
            {"name": "b", "source": {"kind": "http", "url": "http://h/b.vmdk",
                                     "password_file": "/secrets/s/password"},
             "output": {"root": "/volumes/vol-0", "path": "b.qcow2"}},
        ]}
    )  # fmt: skip
    moved = volume_map.translate(job, MAPPING)
    first, second = moved.disks
    assert first.source.root == "/srv/a"  # type: ignore[union-attr]
    assert first.output is not None and first.output.root == "/srv/b"
    assert second.source.password_file == "/run/s/password"  # type: ignore[union-attr]
    assert volume_map.translate(job, {}) is job


def test_parse() -> None:
    assert volume_map.parse(None) == {}
    assert volume_map.parse('{"/a": "/b"}') == {"/a": "/b"}
    with pytest.raises(ValueError, match="JSON object"):
        volume_map.parse('["/a"]')
