"""Verification proves the output equals the source, and catches an output damaged in flight."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from hyper2kvm_worker.conversion import Converter, Observer
from hyper2kvm_worker.errors import Reason, TransientFailure
from hyper2kvm_worker.protocol import FileSource, Output, OutputFormat
from hyper2kvm_worker.tools import Completed, ToolRunner
from tests.worker.conftest import leftovers
from tests.worker.images import MiB, raw_digest, to_vmdk

QUIET = Observer(on_size=lambda _: None, on_phase=lambda _: None, on_bytes=lambda _: None)


class CorruptingRunner(ToolRunner):
    """Runs the real tools, then flips bytes in what `qemu-img convert` wrote: bad storage."""

    def __init__(self, damage: Callable[[Path], None]) -> None:
        super().__init__()
        self._damage = damage

    def run(
        self,
        argv: Sequence[str],
        *,
        on_output: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> Completed:
        done = super().run(argv, on_output=on_output, env=env)
        if list(argv[:2]) == ["qemu-img", "convert"] and done.returncode == 0:
            self._damage(Path(argv[-1]))
        return done


def flip_data_byte(image: Path) -> None:
    # 2 MiB into the file is inside the first data run for both raw and qcow2 outputs.
    with image.open("r+b") as stream:
        stream.seek(2 * MiB - 4096)
        byte = stream.read(1)
        stream.seek(-1, 1)
        stream.write(bytes([byte[0] ^ 0xFF]))


def grow_zero_region(image: Path) -> None:
    # Writing into a region the source has as zeros changes the guest-visible content too.
    with image.open("r+b") as stream:
        stream.seek(40 * MiB)
        stream.write(b"\x01" * 512)


@pytest.mark.parametrize("fmt", [OutputFormat.QCOW2, OutputFormat.RAW])
def test_flipped_byte_in_output_is_caught(
    fmt: OutputFormat, small_raw: Path, tmp_path: Path
) -> None:
    to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    out = tmp_path / "out"
    out.mkdir()
    converter = Converter(CorruptingRunner(flip_data_byte))

    with pytest.raises(TransientFailure) as failure:
        converter.convert(
            "d",
            FileSource(root=str(tmp_path), path="disk.vmdk"),
            Output(root=str(out), path="x.img", format=fmt),
            True,
            QUIET,
        )

    assert failure.value.reason is Reason.VERIFICATION_FAILED
    assert leftovers(out) == []


def test_write_into_a_hole_is_caught(small_raw: Path, tmp_path: Path) -> None:
    to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    out = tmp_path / "out"
    out.mkdir()
    converter = Converter(CorruptingRunner(grow_zero_region))

    with pytest.raises(TransientFailure) as failure:
        converter.convert(
            "d",
            FileSource(root=str(tmp_path), path="disk.vmdk"),
            Output(root=str(out), path="x.raw", format=OutputFormat.RAW),
            True,
            QUIET,
        )

    assert failure.value.reason is Reason.VERIFICATION_FAILED
    assert leftovers(out) == []


def test_without_verification_the_damage_goes_unnoticed(small_raw: Path, tmp_path: Path) -> None:
    """The control for the tests above: the damage is real, only verification sees it."""
    to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    out = tmp_path / "out"
    out.mkdir()
    converter = Converter(CorruptingRunner(flip_data_byte))

    result, staged = converter.convert(
        "d",
        FileSource(root=str(tmp_path), path="disk.vmdk"),
        Output(root=str(out), path="x.raw", format=OutputFormat.RAW),
        False,
        QUIET,
    )
    staged.commit()

    assert result.verified is False
    assert raw_digest(out / "x.raw") != raw_digest(small_raw)


def test_leftover_partial_from_a_killed_attempt_is_replaced(
    small_raw: Path, tmp_path: Path
) -> None:
    to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".x.qcow2.hyper2kvm-partial").write_bytes(b"half of an earlier attempt")

    result, staged = Converter(ToolRunner()).convert(
        "d",
        FileSource(root=str(tmp_path), path="disk.vmdk"),
        Output(root=str(out), path="x.qcow2"),
        True,
        QUIET,
    )
    assert leftovers(out) == [".x.qcow2.hyper2kvm-partial"]
    staged.commit()

    assert result.digest == raw_digest(small_raw)
    assert leftovers(out) == ["x.qcow2"]
