"""`hyper2kvm-operator`: run the MigrationJob operator (Kopf) in a cluster or from a laptop.

Replicas coordinate through Kopf peering: each picks a random priority, the highest acts,
the others stand by and take over when its keep-alives stop.
"""

from __future__ import annotations

import argparse
import logging
import re
import secrets
import sys

import kopf

# Kopf logs every handler, timer and indexer run at INFO: with thousands of jobs, their
# watch events alone make lines by the hundred that bury what matters.
ROUTINE_SUCCESS = re.compile(r"(Handler|Timer|Daemon|Indexer) '[^']+' succeeded\.")


class QuietRoutineSuccess(logging.Filter):
    """Drops Kopf's "<handler> succeeded." lines; failures and our own messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        routine = isinstance(record.msg, str) and ROUTINE_SUCCESS.fullmatch(record.msg)
        return not (record.levelno == logging.INFO and routine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyper2kvm-operator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument("--peering", default="hyper2kvm", help="the Kopf peering object's name")
    parser.add_argument(
        "--standalone", action="store_true", help="no peering (a single replica, or a laptop)"
    )
    parser.add_argument("--priority", type=int, help="peering priority (default: random)")
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8082/healthz", help="Kopf's liveness endpoint"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    from hyper2kvm_operator import handlers  # noqa: F401 - importing registers the handlers

    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        logging.getLogger("kopf.objects").addFilter(QuietRoutineSuccess())
    priority = args.priority if args.priority is not None else secrets.randbelow(1 << 30) + 1
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=priority,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
