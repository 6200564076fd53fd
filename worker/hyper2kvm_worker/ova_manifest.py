"""An OVA's manifest (`*.mf`): the digest its author recorded for each file, and the check
of what was read against it.

Pure: manifest bytes in, expected digests out. Lines look like `SHA256(web01-disk1.vmdk)=
<hex>` (SHA1 and SHA512 too, as ovftool and VirtualBox write them). The manifest comes
from whoever made the OVA, so its size, its names and its digests are all bounded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from hyper2kvm_worker.errors import BadInput, Reason

MANIFEST_MAX_BYTES = 1 << 20  # a line per file of the OVA: real ones are a few hundred bytes
NAME_MAX_CHARS = 1024
_HEX_CHARS = {"sha1": 40, "sha256": 64, "sha512": 128}
_LINE = re.compile(r"^(?P<algorithm>SHA1|SHA256|SHA512)\((?P<name>.+)\)\s*=\s*(?P<hex>\S+)$")


@dataclass(frozen=True)
class Expected:
    """The digest a manifest records for one file."""

    name: str
    algorithm: str  # hashlib's name: sha1, sha256, sha512
    hex: str  # lower case

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    def check(self, actual_hex: str, where: str) -> None:
        """Refuse the file when what was read differs from what the manifest records."""
        if actual_hex.lower() != self.hex:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f"{self.name} in {where} is damaged: its {self.algorithm.upper()} is "
                f"{actual_hex.lower()}, the manifest records {self.hex}",
            )


def parse_manifest(data: bytes, where: str) -> dict[str, Expected]:
    """The expected digest of each file the manifest lists; BadInput says what is wrong."""
    if len(data) > MANIFEST_MAX_BYTES:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"the manifest of {where} is {len(data)} bytes, more than the "
            f"{MANIFEST_MAX_BYTES} accepted",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(Reason.INVALID_IMAGE, f"the manifest of {where} is not UTF-8") from None
    expected: dict[str, Expected] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        entry = _entry(line, number, where)
        known = expected.get(entry.name)
        if known is not None and known != entry:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f"the manifest of {where} lists {entry.name} twice with different digests",
            )
        expected[entry.name] = entry
    return expected


def _entry(line: str, number: int, where: str) -> Expected:
    match = _LINE.match(line)
    if match is None:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"the manifest of {where} has an unreadable line {number}: {line[:80]!r}",
        )
    name, algorithm = match["name"].strip(), match["algorithm"].lower()
    digest = match["hex"].lower()
    if len(name) > NAME_MAX_CHARS:
        raise BadInput(
            Reason.INVALID_IMAGE, f"the manifest of {where} names a file of {len(name)} characters"
        )
    if len(digest) != _HEX_CHARS[algorithm] or not re.fullmatch(r"[0-9a-f]+", digest):
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"the manifest of {where} gives {name} a {algorithm.upper()} that is not "
            f"{_HEX_CHARS[algorithm]} hex digits",
        )
    return Expected(name=name, algorithm=algorithm, hex=digest)
