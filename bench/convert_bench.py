"""Conversion speed against the physical limit (`cp`) and against plain `qemu-img convert`.

A 2 GiB-virtual monolithicSparse VMDK holding 768 MiB of random data (made once and kept in
the cache, outside the clone) is converted by each contender in turn, alternating, several
rounds; the medians are printed as ratios against the baselines of the same run. Dirty
pages are flushed (untimed) before every run so no contender pays for another's writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
WORKER = str(Path(sys.executable).parent / "hyper2kvm-worker")


def cache_dir() -> Path:
    base = os.environ.get("HYPER2KVM_CACHE") or Path.home() / ".cache" / "hyper2kvm"
    path = Path(base) / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_source(directory: Path) -> Path:
    vmdk = directory / "bench-2g-768m.vmdk"
    if vmdk.exists():
        return vmdk
    raw = directory / "bench.raw.tmp"
    with raw.open("wb") as stream:
        stream.truncate(2 * GiB)
        # 12 runs of 64 MiB spread over the disk, as a half-full guest filesystem looks.
        for index in range(12):
            stream.seek(index * 160 * MiB)
            for _ in range(64):
                stream.write(os.urandom(MiB))
    partial = directory / "bench.vmdk.tmp"
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicSparse",
            str(raw),
            str(partial),
        ],
        check=True,
    )
    raw.unlink()
    partial.rename(vmdk)
    return vmdk


def timed(command: list[str]) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for tool in ("qemu-img", "cp", "sync"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing; run `make setup`", file=sys.stderr)
            return 1
    directory = cache_dir()
    source = make_source(directory)
    out = directory / "out"
    out.mkdir(exist_ok=True)
    target = out / "target"

    contenders: dict[str, Callable[[], list[str]]] = {
        "cp": lambda: ["cp", str(source), str(target)],
        "qemu-img": lambda: [
            "qemu-img",
            "convert",
            "-f",
            "vmdk",
            "-O",
            "qcow2",
            str(source),
            str(target),
        ],
        "qemu-img+sync": lambda: [
            "sh",
            "-c",
            f'qemu-img convert -f vmdk -O qcow2 "{source}" "{target}" && sync -d "{target}"',
        ],
        "worker --no-verify": lambda: [
            WORKER,
            "convert",
            "--no-verify",
            "--overwrite",
            str(source),
            str(target),
        ],
        "worker (verified)": lambda: [
            WORKER,
            "convert",
            "--overwrite",
            str(source),
            str(target),
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    subprocess.run(["cat", str(source)], check=True, stdout=subprocess.DEVNULL)  # warm the cache
    names = list(contenders)
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else list(reversed(names))
        for name in order:
            target.unlink(missing_ok=True)
            times[name].append(timed(contenders[name]()))
    target.unlink(missing_ok=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"source: {source.name}: 2 GiB virtual, 768 MiB data; {args.rounds} rounds, medians")
    print(f"{'contender':<22}{'median s':>10}{'vs qemu-img':>14}{'vs cp':>9}")
    for name in names:
        print(
            f"{name:<22}{median[name]:>10.3f}{median[name] / median['qemu-img']:>14.2f}"
            f"{median[name] / median['cp']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
