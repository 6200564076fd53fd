"""Names the operator gives what it makes: short enough for every place a name goes.

Pure.
"""

from __future__ import annotations

import hashlib

NAME_MAX = 63  # a DNS label: a Pod's hostname, a label value


def short_name(job: str, suffix: str = "") -> str:
    """`<job><suffix>`, or for a long job name a shortened one with a hash of the whole:
    at most 63 characters, deterministic, and distinct for distinct jobs."""
    name = f"{job}{suffix}"
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(job.encode()).hexdigest()[:8]
    keep = NAME_MAX - len(suffix) - len(digest) - 1
    return f"{job[:keep].rstrip('-.')}-{digest}{suffix}"
