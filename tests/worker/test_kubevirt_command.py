"""`hyper2kvm-worker kubevirt`, run as a user runs it, its output checked by KubeVirt's types.

Every test taking the `kubevirt_check` fixture needs the checker that `make kubevirt-checker`
builds (hack/kubevirt: a strict decode into kubevirt.io/api's VirtualMachine); without it
they fail, naming that target, rather than skip.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.worker.conftest import RunWorker, assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "unit" / "golden"
NETWORKS = ("--network-map", "VM Network=pod", "--network-map", "backend-vlan20=multus:net/vlan20")


@pytest.fixture(scope="session")
def kubevirt_check() -> Path:
    """The checker binary; asking the build script where it lives is instant."""
    done = subprocess.run(
        ["bash", str(ROOT / "hack" / "kubevirt" / "build.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    binary = Path(done.stdout.strip()) / "kubevirt-check"
    if not binary.is_file():
        pytest.fail(f"no {binary}: run `make kubevirt-checker` first", pytrace=False)
    return binary


def check(binary: Path, manifest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary)], input=manifest, capture_output=True, text=True, check=False, timeout=60
    )


def accepted(binary: Path, manifest: str) -> None:
    done = check(binary, manifest)
    assert done.returncode == 0, done.stderr


def rejected(binary: Path, manifest: str) -> str:
    done = check(binary, manifest)
    assert done.returncode == 1, (done.returncode, done.stdout)
    return done.stderr


def make_ova(path: Path, descriptor: bytes, disks: tuple[str, ...] = ()) -> Path:
    """An OVA as ovftool lays it out: the descriptor first, then the disks."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        members = [("web01.ovf", descriptor)] + [(name, b"\0" * 1024) for name in disks]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def web01_ova(tmp_path: Path) -> Path:
    descriptor = (GOLDEN / "web01.ovf").read_bytes()
    return make_ova(
        tmp_path / "web01.ova", descriptor, disks=("web01-disk1.vmdk", "web01-disk2.vmdk")
    )


def test_an_ova_becomes_a_vm_kubevirt_accepts(
    run_worker: RunWorker, web01_ova: Path, kubevirt_check: Path
) -> None:
    outcome = run_worker(
        "kubevirt", "--ova", web01_ova, *NETWORKS, "--claim-prefix", "web01-ovf-sata"
    )
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout == (GOLDEN / "web01-ovf-sata.yaml").read_text()
    assert "note: disks on the sata bus" in outcome.stderr
    assert "from ovf: metadata.name, domain.cpu" in outcome.stderr
    accepted(kubevirt_check, outcome.stdout)


def test_json_with_virtio_is_accepted_too(
    run_worker: RunWorker, web01_ova: Path, kubevirt_check: Path
) -> None:
    outcome = run_worker(
        "kubevirt", "--ova", web01_ova, *NETWORKS, "--virtio", "--json",
        "--claim-prefix", "web01-ovf-virtio", "--name", "web01", "--label", "tier=web",
    )  # fmt: skip
    assert outcome.returncode == 0, outcome.stderr
    manifest = json.loads(outcome.stdout)
    golden = yaml.safe_load((GOLDEN / "web01-ovf-virtio.yaml").read_text())
    assert manifest["spec"]["template"]["spec"] == golden["spec"]["template"]["spec"]
    assert manifest["metadata"] == {"name": "web01", "labels": {"tier": "web"}}
    accepted(kubevirt_check, outcome.stdout)


def test_a_vmx_becomes_a_vm_kubevirt_accepts(run_worker: RunWorker, kubevirt_check: Path) -> None:
    outcome = run_worker(
        "kubevirt", "--vmx", GOLDEN / "db01.vmx", "--network-map", "VM Network=pod",
        "--virtio", "--claim-prefix", "db01-vmx-virtio", "--name", "db01-vmx-virtio",
    )  # fmt: skip
    assert outcome.returncode == 0, outcome.stderr
    golden = yaml.safe_load((GOLDEN / "db01-vmx-virtio.yaml").read_text())
    golden["metadata"]["name"] = "db01-vmx-virtio"
    golden["spec"]["template"]["metadata"]["labels"]["kubevirt.io/vm"] = "db01-vmx-virtio"
    assert yaml.safe_load(outcome.stdout) == golden
    accepted(kubevirt_check, outcome.stdout)


def test_an_instancetype_vm_is_accepted(
    run_worker: RunWorker, web01_ova: Path, kubevirt_check: Path
) -> None:
    outcome = run_worker(
        "kubevirt", "--ova", web01_ova, *NETWORKS, "--instancetype", "u1.large",
        "--preference", "ubuntu", "--run-strategy", "Always", "--namespace", "vms",
    )  # fmt: skip
    assert outcome.returncode == 0, outcome.stderr
    accepted(kubevirt_check, outcome.stdout)


@pytest.mark.parametrize("golden", sorted(p.name for p in GOLDEN.glob("*.yaml")))
def test_every_golden_manifest_is_accepted(golden: str, kubevirt_check: Path) -> None:
    accepted(kubevirt_check, (GOLDEN / golden).read_text())


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("runStrategy", "runStrategi"), 'unknown field "runStrategi"'),
        (("bootOrder", "bootOrdr"), 'spec.template.spec: json: unknown field "bootOrdr"'),
        (("macAddress", "macAdress"), 'unknown field "macAdress"'),
        (("pod: {}", "pod: {vmNetworkCIDRs: x}"), "networks[0].pod: json: unknown field"),
        (("sockets: 2", 'sockets: "2"'), "cannot unmarshal string"),
        (('"Halted"', '"Halt"'), 'spec.runStrategy "Halt": not one of'),
        (('model: "e1000e"', 'model: "vmxnet3"'), 'model "vmxnet3" is not one of'),
        (('bus: "sata"', 'bus: "ide"'), 'bus "ide" is not one of'),
        (("kubevirt.io/v1", "kubevirt.io/v1alpha3"), 'apiVersion "kubevirt.io/v1alpha3"'),
    ],
)
def test_the_checker_rejects_what_kubevirt_would(
    change: tuple[str, str], words: str, kubevirt_check: Path
) -> None:
    text = (GOLDEN / "web01-ovf-sata.yaml").read_text()
    assert change[0] in text
    assert words in rejected(kubevirt_check, text.replace(change[0], change[1], 1))


def test_the_checker_rejects_secure_boot_without_smm(kubevirt_check: Path) -> None:
    manifest = yaml.safe_load((GOLDEN / "web01-ovf-virtio.yaml").read_text())
    del manifest["spec"]["template"]["spec"]["domain"]["features"]
    assert "needs features.smm" in rejected(kubevirt_check, json.dumps(manifest))


def test_an_unmapped_network_fails_naming_it(run_worker: RunWorker, web01_ova: Path) -> None:
    outcome = run_worker("kubevirt", "--ova", web01_ova, "--network-map", "VM Network=pod")
    assert_one_line_error(outcome, 3, "InvalidJob")
    assert "'backend-vlan20' not in the network map" in outcome.stderr
    assert outcome.stdout == ""


def test_an_ova_with_entity_expansion_is_refused(run_worker: RunWorker, tmp_path: Path) -> None:
    descriptor = (
        (GOLDEN / "web01.ovf")
        .read_bytes()
        .replace(
            b"<Envelope",
            b'<!DOCTYPE e [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n<Envelope',
            1,
        )
    )
    outcome = run_worker(
        "kubevirt", "--ova", make_ova(tmp_path / "bomb.ova", descriptor), *NETWORKS
    )
    assert_one_line_error(outcome, 3, "InvalidImage")
    assert "DTD or entities, which are refused" in outcome.stderr


def test_an_ova_without_a_descriptor_is_refused(run_worker: RunWorker, tmp_path: Path) -> None:
    ova = tmp_path / "empty.ova"
    with tarfile.open(ova, "w") as tar:
        info = tarfile.TarInfo("disk.vmdk")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"KDMV"))
    outcome = run_worker("kubevirt", "--ova", ova)
    assert_one_line_error(outcome, 3, "InvalidImage")
    assert "holds no .ovf descriptor" in outcome.stderr


def test_a_malformed_vmx_line_is_refused(run_worker: RunWorker, tmp_path: Path) -> None:
    vmx = tmp_path / "bad.vmx"
    vmx.write_text('displayName = "x"\nmemsize: 4096\n')
    outcome = run_worker("kubevirt", "--vmx", vmx)
    assert_one_line_error(outcome, 3, "InvalidImage")
    assert ".vmx line 2:" in outcome.stderr


@pytest.mark.parametrize(
    "argument",
    [("--network-map", "VM Network"), ("--network-map", "a=bridge"), ("--memory", "4G"),
     ("--label", "novalue")],
)  # fmt: skip
def test_bad_arguments_are_usage_errors(
    run_worker: RunWorker, web01_ova: Path, argument: tuple[str, str]
) -> None:
    outcome = run_worker("kubevirt", "--ova", web01_ova, *argument)
    assert_one_line_error(outcome, 2, "InvalidJob")


def test_a_missing_source_is_refused(run_worker: RunWorker, tmp_path: Path) -> None:
    outcome = run_worker("kubevirt", "--ovf", tmp_path / "nothing.ovf")
    assert_one_line_error(outcome, 3, "SourceNotFound")
