"""VMware's vCenter simulator (vcsim, built from govmomi by hack/vcsim/build.sh), run for a test.

`running()` starts one vcsim on a free port of `host`, with a login of its own and its
datastores in directories under `workdir`, and stops it (no process left) when the block
ends. It is a plain context manager so that any fixture (module-scoped here, session-scoped
in the cluster tests) can hold one. TLS is vcsim's own: its certificate (for 127.0.0.1 and
::1) is read from the server and kept as the CA bundle a client trusts, with its SHA-256 and
SHA-1 thumbprints. For another address a self-signed certificate naming it is made first,
since vcsim's own names only loopback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import select
import shutil
import signal
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "vcsim" / "build.sh"
START_TIMEOUT = 60.0  # seconds; vcsim is listening within a second here
STOP_TIMEOUT = 10.0
SETPRIV = shutil.which("setpriv")


@dataclass(frozen=True)
class Vcsim:
    """A running vcsim: where it listens, its login, and how a client trusts it."""

    url: str  # https://host:port/sdk, no credentials in it
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    ca_pem: Path  # the server's certificate, PEM: a client's CA bundle
    thumbprint_sha256: str  # AA:BB:... of the certificate's DER bytes
    thumbprint_sha1: str  # the same in SHA-1, the form vCenter shows
    datastores: Mapping[str, Path]  # datastore name -> the directory that holds its files
    datacenter: str  # the one vcsim makes: DC0, or ESXi's ha-datacenter
    bin_dir: Path  # vcsim and govc
    pid: int

    def govc_env(self) -> dict[str, str]:
        """The environment for govc against this vcsim (TLS verified against its CA)."""
        return {
            "GOVC_URL": self.url,
            "GOVC_USERNAME": self.username,
            "GOVC_PASSWORD": self.password,
            "GOVC_TLS_CA_CERTS": str(self.ca_pem),
            "GOVC_PERSIST_SESSION": "false",  # no session files in ~/.govmomi
            "GOVC_DATACENTER": self.datacenter,  # tests may add more datacenters
        }

    def govc(self, *args: str, timeout: float = 60.0) -> str:
        """Run `govc ARGS` against this vcsim; its stdout. Fails with govc's own words."""
        env = {**os.environ, **self.govc_env()}
        done = subprocess.run(
            [str(self.bin_dir / "govc"), *args],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"govc {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


def bin_dir() -> Path:
    """Where vcsim and govc are: built once (`make vcsim`), found at once afterwards."""
    done = subprocess.run([str(BUILD)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{BUILD} failed: {done.stderr.strip()[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def thumbprint(der: bytes, algorithm: str) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.new(algorithm, der).digest())


@contextlib.contextmanager
def running(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    user: str = "migrator",
    password: str = "vcsim-Test-Passw0rd",  # noqa: S107 - a test server's
    args: tuple[str, ...] = (),
) -> Iterator[Vcsim]:
    """Run vcsim on a free port of `host` (or on `port`) until the block ends; `args` go to
    vcsim as they are (e.g. ("-vm", "0") for no ready-made VMs). Run again with the same
    `workdir` and `port`, it is the same server to its clients: same address, certificate
    and login (a fresh inventory, though)."""
    # As vCenter's (administrator@vsphere.local), vcsim's SSO directory holds -username in the
    # vsphere.local domain; a simulated ESXi (-esx) has no SSO and knows the bare name.
    username = user if "-esx" in args else f"{user}@vsphere.local"
    binaries = bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    stores = workdir / "datastores"
    stores.mkdir(exist_ok=True)
    # vcsim reads a -password that names a file from the file: off the command line.
    secret = workdir / "password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    fifo = workdir / "env.fifo"
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    os.mkfifo(fifo, 0o600)
    command = [
        str(binaries / "vcsim"), "-l", _join(host, port), "-E", str(fifo),
        "-username", user, "-password", str(secret), *_tls_args(host, workdir), *args,
    ]  # fmt: skip
    log = (workdir / "vcsim.log").open("wb")
    # Datastores are made under TMPDIR; vcsim removes them when it stops.
    env = {**os.environ, "TMPDIR": str(stores)}
    # setpriv ties vcsim to this process: a test run killed without teardown leaves none.
    tie = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []
    process = subprocess.Popen(
        [*tie, *command], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        url = _announced_url(fifo, process, workdir / "vcsim.log")
        assert url.port is not None
        port = url.port
        pem = ssl.get_server_certificate((host, port), timeout=10)
        ca_pem = workdir / "vcsim-ca.pem"
        ca_pem.write_text(pem)
        der = ssl.PEM_cert_to_DER_cert(pem)
        sim = Vcsim(
            url=f"https://{_join(host, port)}/sdk",
            host=host,
            port=port,
            username=username,
            password=password,
            ca_pem=ca_pem,
            thumbprint_sha256=thumbprint(der, "sha256"),
            thumbprint_sha1=thumbprint(der, "sha1"),
            datastores={},
            datacenter="ha-datacenter" if "-esx" in args else "DC0",
            bin_dir=binaries,
            pid=process.pid,
        )
        yield dataclasses.replace(sim, datastores=_datastores(sim))
    finally:
        _stop(process)
        log.close()


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_args(host: str, workdir: Path) -> list[str]:
    if host in ("127.0.0.1", "::1"):
        return []
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    if cert.exists() and key.exists():  # a restart: the certificate clients already trust
        return ["-tlscert", str(cert), "-tlskey", str(key)]
    kind = "IP" if _is_ip(host) else "DNS"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={host}", "-addext",
         f"subjectAltName={kind}:{host}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return ["-tlscert", str(cert), "-tlskey", str(key)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _announced_url(
    fifo: Path, process: subprocess.Popen[bytes], log: Path
) -> urllib.parse.SplitResult:
    """vcsim writes `export GOVC_URL=https://user:pass@host:port/sdk GOVC_SIM_PID=N` into
    the FIFO once it listens. Non-blocking, so a vcsim that dies first cannot hang us."""
    deadline = time.monotonic() + START_TIMEOUT
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    try:
        while b"\n" not in data:
            if process.poll() is not None:
                raise RuntimeError(
                    f"vcsim exited ({process.returncode}): {log.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"vcsim did not start in {START_TIMEOUT:.0f}s")
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    chunk = os.read(fd, 4096)
                    if not chunk and data:
                        break  # the writer is done
                    data += chunk
    finally:
        os.close(fd)
    for word in data.decode().split():
        if word.startswith("GOVC_URL="):
            return urllib.parse.urlsplit(word.removeprefix("GOVC_URL="))
    raise RuntimeError("vcsim announced no GOVC_URL")


def _datastores(sim: Vcsim) -> dict[str, Path]:
    info = json.loads(sim.govc("datastore.info", "-json", "*"))
    return {ds["name"]: Path(ds["info"]["url"]) for ds in info["datastores"]}


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: vcsim removes its datastore directories
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group
