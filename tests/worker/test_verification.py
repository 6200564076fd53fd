"""Verification proves the output equals the source, and catches an output damaged in flight."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from hyper2kvm_worker.conversion import Converter, Observer, PendingOutput
from hyper2kvm_worker.errors import Reason, TransientFailure
from hyper2kvm_worker.protocol import DiskResult, FileSource, Output, OutputFormat
from hyper2kvm_worker.tools import Completed, ToolRunner
from tests import requirements
from tests.worker.conftest import leftovers
from tests.worker.images import MiB, raw_digest, to_vmdk

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

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


def convert(
    runner: ToolRunner,
    small_raw: Path,
    tmp_path: Path,
    name: str,
    verify: bool,
    fmt: OutputFormat = OutputFormat.RAW,
) -> tuple[DiskResult, PendingOutput]:
    """Convert a monolithicSparse copy of `small_raw` into `tmp_path/out/name`, uncommitted."""
    to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    (tmp_path / "out").mkdir(exist_ok=True)
    return Converter(runner).convert(
        "d",
        FileSource(root=str(tmp_path), path="disk.vmdk"),
        Output(root=str(tmp_path / "out"), path=name, format=fmt),
        verify,
        QUIET,
    )


@pytest.mark.parametrize(
    ("fmt", "damage"),
    [
        (OutputFormat.QCOW2, flip_data_byte),
        (OutputFormat.RAW, flip_data_byte),
        # In a raw file, offset 40 MiB is a hole of the guest's disk (in qcow2 it is not).
        (OutputFormat.RAW, grow_zero_region),
    ],
)
def test_damaged_output_is_caught(
    fmt: OutputFormat, damage: Callable[[Path], None], small_raw: Path, tmp_path: Path
) -> None:
    with pytest.raises(TransientFailure) as failure:
        convert(CorruptingRunner(damage), small_raw, tmp_path, "x.img", True, fmt)

    assert failure.value.reason is Reason.VERIFICATION_FAILED
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("damage", [flip_data_byte, grow_zero_region])
def test_without_verification_the_damage_goes_unnoticed(
    damage: Callable[[Path], None], small_raw: Path, tmp_path: Path
) -> None:
    """The control for the test above: the damage is real, only verification sees it."""
    result, staged = convert(CorruptingRunner(damage), small_raw, tmp_path, "x.raw", False)
    staged.commit()

    assert result.verified is False
    assert raw_digest(tmp_path / "out" / "x.raw") != raw_digest(small_raw)


def test_leftovers_of_a_killed_attempt_are_cleared(small_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".x.qcow2.hyper2kvm-k1ll3d").mkdir(parents=True)
    (out / ".x.qcow2.hyper2kvm-k1ll3d" / "x.qcow2").write_bytes(b"half of an earlier attempt")
    (out / ".x.qcow2.hyper2kvm-partial").write_bytes(b"an older worker's partial file")

    result, staged = convert(ToolRunner(), small_raw, tmp_path, "x.qcow2", True)
    (private,) = leftovers(out)
    assert private.startswith(".x.qcow2.hyper2kvm-") and private != ".x.qcow2.hyper2kvm-k1ll3d"
    assert (out / private).stat().st_mode & 0o777 == 0o700
    staged.commit()

    assert result.digest == raw_digest(small_raw)
    assert leftovers(out) == ["x.qcow2"]


def test_the_partial_file_cannot_be_diverted_by_another_writer(
    small_raw: Path, tmp_path: Path
) -> None:
    """Another writer of the output directory plants symlinks where a fixed partial name or
    the output would be: the work stays in the private directory and the victim is intact."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's file")
    for name in (".x.qcow2.hyper2kvm-partial", ".x.qcow2.hyper2kvm-partial.qcow2"):
        (out / name).symlink_to(victim)

    result, staged = convert(ToolRunner(), small_raw, tmp_path, "x.qcow2", True)
    (out / "x.qcow2").symlink_to(victim)  # planted while the conversion ran
    staged.commit()

    assert victim.read_bytes() == b"someone else's file"
    assert not (out / "x.qcow2").is_symlink()  # the rename replaced the link, not its target
    assert raw_digest(out / "x.qcow2") == result.digest == raw_digest(small_raw)
