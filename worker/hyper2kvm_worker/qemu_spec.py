"""The options qemu opens a source with: every file is one the worker named, nothing else.

Pure. Given as `json:{...}` in place of a file name, they name each file node explicitly
(a pinned descriptor `/proc/self/fd/N`, a descriptor the worker wrote, or the NBD socket
of a remote or archived source) and no backing image but the one such a descriptor names:
qemu then neither resolves a name from inside an image (an extent, a parentFileNameHint,
a `json:` or protocol pseudo-name) nor opens anything the worker's own reading of the
VMDK did not list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Node = Mapping[str, Any]


def local_file(path: str) -> Node:
    return {"driver": "file", "filename": path}


def nbd_socket(socket: str) -> Node:
    return {"driver": "nbd", "server": {"type": "unix", "path": socket}}


def vmdk(file: Node, *, parent_in_descriptor: bool = False) -> Node:
    """A VMDK image read from `file`. qemu's vmdk driver opens a parent only by the name in
    the descriptor it reads (it takes no `backing` options): with `parent_in_descriptor`
    that descriptor is one the worker wrote; otherwise no parent is opened at all."""
    node: dict[str, Any] = {"driver": "vmdk", "file": dict(file)}
    if not parent_in_descriptor:
        node["backing"] = None
    return node


def as_filename(node: Node) -> str:
    """The node as qemu takes it wherever a file name goes (qemu-img, qemu-nbd, -b)."""
    return "json:" + json.dumps(node, separators=(",", ":"), sort_keys=True)
