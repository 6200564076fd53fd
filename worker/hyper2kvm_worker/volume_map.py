"""Container paths to host paths, for runtimes that run the worker without mount namespaces.

A Pod names its volumes by their mount paths (`/volumes/vol-0`). Where the worker runs as
a plain process instead (the test node agent does), the runtime passes the mapping as JSON
in HYPER2KVM_VOLUME_MAP, and every path in the job is translated before it is used. With
no mapping the job is unchanged.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping

from hyper2kvm_worker.protocol import FileSource, HttpSource, Job, OvaSource

ENV = "HYPER2KVM_VOLUME_MAP"


def parse(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    mapping = json.loads(text)
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise ValueError(f"{ENV} must be a JSON object of paths")
    return mapping


def translate_path(path: str, mapping: Mapping[str, str]) -> str:
    """`path` under the longest container path that contains it, moved to its host path."""
    for container in sorted(mapping, key=len, reverse=True):
        prefix = container.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            return posixpath.join(mapping[container], path[len(prefix) :].lstrip("/")).rstrip("/")
    return path


def translate(job: Job, mapping: Mapping[str, str]) -> Job:
    if not mapping:
        return job

    def moved(path: str | None) -> str | None:
        return None if path is None else translate_path(path, mapping)

    disks = []
    for disk in job.disks:
        source = disk.source
        if isinstance(source, FileSource | OvaSource):
            source = source.model_copy(update={"root": moved(source.root)})
        elif isinstance(source, HttpSource):
            source = source.model_copy(
                update={
                    "user_file": moved(source.user_file),
                    "password_file": moved(source.password_file),
                    "ca_file": moved(source.ca_file),
                }
            )
        output = disk.output
        if output is not None:
            output = output.model_copy(update={"root": moved(output.root)})
        disks.append(disk.model_copy(update={"source": source, "output": output}))
    return job.model_copy(update={"disks": disks})
