"""Conversion from a web server over a shaped link, against the link and against plain tools.

Disks are served by nginx in a network namespace of the bench's own, at RATE with a
latency per request (shaped_link.py). For each latency and each kind of disk (a
monolithicSparse VMDK, a streamOptimized VMDK, a flat extent), it times, in one run:

- the link: `curl` of the whole file;
- plain tools: nbdkit's curl plugin and `qemu-img convert -O qcow2`, then sync;
- the worker, verified and with --no-verify, to qcow2.

It prints each as MB/s, as a share of the link, and against plain tools; the verified run
against the unverified one shows what verification costs over a network. A last case cuts
the link (connections reset, new ones refused) for a few seconds in the middle of a
verified conversion and prints its time against the uncut one. Then a half-empty ext4
guest disk, served flat as a thin datastore disk is, converts reading every byte and with
--skip-free-space (libguestfs finds what no filesystem uses, which is not read). Last, a
4-disk VM converts one disk at a time and all four at once (parallel_disks).

Needs root (namespaces, tc) and nginx-light; `make bench` installs what it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shaped_link import ShapedLink, shaped_link

MiB = 1 << 20
WORKER = str(Path(sys.executable).parent / "hyper2kvm-worker")
KINDS = {
    "monolithicSparse": ("sparse.vmdk", "vmdk"),
    "streamOptimized": ("stream.vmdk", "vmdk"),
    "flat": ("disk-flat.vmdk", "raw"),
}


def cache_dir() -> Path:
    base = os.environ.get("HYPER2KVM_CACHE") or Path.home() / ".cache" / "hyper2kvm"
    path = Path(base) / "bench" / "remote"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_disks(directory: Path, size_mib: int, data_mib: int) -> Path:
    """A raw disk with `data_mib` of random data in 64 MiB runs spread over `size_mib`, and
    its three served forms; made once and kept outside the clone."""
    folder = directory / f"{size_mib}m-{data_mib}m"
    if (folder / "done").exists():
        return folder
    folder.mkdir(exist_ok=True)
    raw = folder / "disk-flat.vmdk"
    runs = max(1, data_mib // 64)
    stride = size_mib // runs
    with raw.open("wb") as stream:
        stream.truncate(size_mib * MiB)
        for index in range(runs):
            stream.seek(index * stride * MiB)
            for _ in range(64):
                stream.write(os.urandom(MiB))
    for name, (file, _) in KINDS.items():
        if name != "flat":
            options = ["-f", "raw", "-O", "vmdk", "-o", f"subformat={name}"]
            subprocess.run(["qemu-img", "convert", *options, str(raw), str(folder / file)],
                           check=True)  # fmt: skip
    for entry in folder.iterdir():
        entry.chmod(0o644)
    folder.chmod(0o755)
    (folder / "done").touch()
    return folder


def make_guest(directory: Path, size_mib: int) -> Path:
    """A half-empty ext4 guest disk as a datastore serves a thin one: a quarter of it in
    files, half of it in a file since deleted (free, but still holding its bytes)."""
    disk = directory / f"guest-{size_mib}m-flat.vmdk"
    if disk.exists():
        return disk
    files = Path(tempfile.mkdtemp(prefix="hyper2kvm-guest-", dir=directory))
    for name, share in (("kept.bin", 4), ("deleted.bin", 2)):
        with (files / name).open("wb") as stream:
            for _ in range(size_mib // share):
                stream.write(os.urandom(MiB))
    partial = directory / "guest.tmp"
    with partial.open("wb") as stream:
        stream.truncate(size_mib * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", "-d", str(files),
                    str(partial)], check=True)  # fmt: skip
    subprocess.run(["debugfs", "-w", "-R", "rm /deleted.bin", str(partial)], check=True,
                   capture_output=True)  # fmt: skip
    shutil.rmtree(files)
    partial.chmod(0o644)
    partial.rename(disk)
    return disk


def free_space_case(link: ShapedLink, disk: Path, target: Path) -> None:
    """A verified conversion of the half-empty guest, reading every byte, then skipping what
    no filesystem uses (the libguestfs appliance's start included)."""
    url = link.url(disk.name)
    whole = timed(worker(url, target, True))
    target.unlink(missing_ok=True)
    skipping = timed([*worker(url, target, True), "--skip-free-space"])
    target.unlink(missing_ok=True)
    size = disk.stat().st_size
    print(f"half-empty ext4 guest, {size >> 20} MiB flat: every byte {whole:.1f} s, "
          f"--skip-free-space {skipping:.1f} s, ratio {skipping / whole:.2f}")  # fmt: skip


def four_disks_case(link: ShapedLink, file: str, work: Path) -> None:
    """A 4-disk VM (the same served disk four times), unverified: one disk at a time
    against all four at once, in one job."""
    url = link.url(file)

    def job(width: int) -> Path:
        out = work / f"vm{width}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        disks = [
            {"name": f"d{i}", "source": {"kind": "http", "url": url},
             "output": {"root": str(out), "path": f"d{i}.qcow2"}}
            for i in range(4)
        ]  # fmt: skip
        path = work / f"job{width}.json"
        path.write_text(json.dumps({"name": "vm", "operation": "convert", "disks": disks,
                                    "verify": False, "parallel_disks": width}))  # fmt: skip
        return path

    one = [WORKER, "run", "--job", str(job(1)), "--result", str(work / "r1.json"), "--no-listen"]
    four = [WORKER, "run", "--job", str(job(4)), "--result", str(work / "r4.json"), "--no-listen"]
    serial, parallel = timed(one), timed(four)
    print(f"4-disk VM of {file}: one at a time {serial:.1f} s, four at once {parallel:.1f} s, "
          f"ratio {parallel / serial:.2f}")  # fmt: skip


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... failed: {done.stderr.strip()[-400:]}")
    return elapsed


def plain_tools(url: str, fmt: str, target: Path) -> list[str]:
    script = (
        'd=$(mktemp -d); nbdkit --exit-with-parent -f -r -U "$d/s" curl url="$1" & '
        'while [ ! -S "$d/s" ]; do sleep 0.01; done; '
        'qemu-img convert -f "$2" -O qcow2 "nbd+unix:///?socket=$d/s" "$3" && sync -d "$3"; '
        'rc=$?; kill %1; rm -rf "$d"; exit $rc'
    )
    return ["bash", "-c", script, "plain", url, fmt, str(target)]


def worker(url: str, target: Path, verify: bool) -> list[str]:
    return [WORKER, "convert", "--json", "--overwrite", *([] if verify else ["--no-verify"]), url,
            str(target)]  # fmt: skip


def cut_case(link: ShapedLink, url: str, target: Path, uncut: float, cut_seconds: float) -> None:
    """A verified conversion whose link goes away for `cut_seconds`, a third of the way in."""

    def cut_later() -> None:
        time.sleep(uncut / 3)
        link.cut(cut_seconds)

    cutter = threading.Thread(target=cut_later)
    target.unlink(missing_ok=True)
    cutter.start()
    start = time.perf_counter()
    done = subprocess.run(worker(url, target, True), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    cutter.join()
    result = [json.loads(line) for line in done.stdout.splitlines() if '"result"' in line]
    verified = bool(result) and all(d.get("verified") for d in result[-1].get("disks", []))
    print(f"link cut {cut_seconds:.0f} s mid-copy: exit {done.returncode}, "
          f"verified {verified}, {elapsed:.1f} s against {uncut:.1f} s uncut "
          f"(+{elapsed - uncut:.1f} s; the cut itself {cut_seconds:.0f} s)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="1gbit", help="tc rate of the link")
    parser.add_argument("--latency", type=float, nargs="+", default=[1.0, 10.0], help="ms")
    parser.add_argument("--size", type=int, default=2048, help="virtual MiB")
    parser.add_argument("--data", type=int, default=768, help="MiB of data in it")
    parser.add_argument("--cut", type=float, default=4.0, help="seconds the link is cut")
    parser.add_argument("--guest", type=int, default=4096, help="MiB of the half-empty guest")
    parser.add_argument("--four-disks", action=argparse.BooleanOptionalAction, default=True,
                        help="a 4-disk VM, one disk at a time against all at once")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the remote bench needs root (network namespaces, tc)", file=sys.stderr)
        return 1
    for tool in ("nginx", "tc", "ip", "curl", "nbdkit", "qemu-img", "mkfs.ext4", "debugfs"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing; run `make setup`", file=sys.stderr)
            return 1
    disks = make_disks(cache_dir(), args.size, args.data)
    work = Path(tempfile.mkdtemp(prefix="hyper2kvm-remote-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    target = work / "out.qcow2"
    print(f"disks: {args.size} MiB virtual, {args.data} MiB of data; link {args.rate}")
    header = (f"{'latency':>8} {'disk':<17}{'contender':<21}{'s':>7}{'MB/s':>8}"
              f"{'of link':>9}{'vs plain':>10}")  # fmt: skip
    print(header)
    try:
        for index, latency in enumerate(args.latency):
            with shaped_link(disks, work, args.rate, latency, index) as link:
                for kind, (file, fmt) in KINDS.items():
                    url = link.url(file)
                    stored = (disks / file).stat().st_size
                    runs = {
                        "link (curl)": ["curl", "-sf", "-o", "/dev/null", url],
                        "nbdkit-curl+qemu-img": plain_tools(url, fmt, target),
                        "worker --no-verify": worker(url, target, False),
                        "worker (verified)": worker(url, target, True),
                    }
                    times: dict[str, float] = {}
                    for name, command in runs.items():
                        target.unlink(missing_ok=True)
                        times[name] = timed(command)
                    for name, seconds in times.items():
                        rate = stored / seconds / 1e6
                        print(f"{latency:>6.0f}ms {kind:<17}{name:<21}{seconds:>7.2f}{rate:>8.1f}"
                              f"{times['link (curl)'] / seconds:>8.0%}"
                              f"{times['nbdkit-curl+qemu-img'] / seconds:>9.2f}x")  # fmt: skip
                    verified, unverified = times["worker (verified)"], times["worker --no-verify"]
                    print(f"{'':>9}{kind:<17}verified / unverified {verified / unverified:.2f}")
                    if kind == "monolithicSparse" and index == 0 and args.cut > 0:
                        cut_case(link, url, target, verified, args.cut)
                if latency == args.latency[-1] and args.four_disks:
                    four_disks_case(link, "sparse.vmdk", work)
                if index == 0 and args.guest:
                    free_space_case(link, make_guest(disks, args.guest), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
