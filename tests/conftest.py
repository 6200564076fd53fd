"""Suite-wide checks: what the collected tests need from the machine is there."""

from __future__ import annotations

import pytest

from tests import requirements


def pytest_collection_finish(session: pytest.Session) -> None:
    needs: set[str] = set()
    for item in session.items:
        for mark in item.iter_markers("needs"):
            unknown = [need for need in mark.args if not requirements.known(need)]
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: unknown needs {unknown}")
            needs.update(mark.args)
    lacking = requirements.missing(needs)
    if lacking:
        pytest.exit(f"this machine lacks {'; '.join(lacking)}: run `make setup`", returncode=4)
