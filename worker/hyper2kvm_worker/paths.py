"""Confining paths to a volume root, with symlinks resolved: the check made on disk."""

from __future__ import annotations

from pathlib import Path

from hyper2kvm_worker.errors import BadInput, Reason


def confine(root: Path, relative: str, what: str) -> Path:
    """The real path of `root/relative`, which must exist and stay inside `root`."""
    candidate = root / relative
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise BadInput(
            Reason.SOURCE_NOT_FOUND, f"{what} {candidate} does not exist; check the path"
        ) from None
    except OSError as error:
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"{what} {candidate}: {error.strerror}") from None
    if not real.is_relative_to(root.resolve()):
        raise BadInput(
            Reason.UNSAFE_PATH,
            f"{what} {candidate} resolves to {real}, outside {root}; refusing to read it",
        )
    return real


def confine_new(root: Path, relative: str, what: str) -> Path:
    """Where a new file `root/relative` will be written: its directory must stay inside `root`."""
    candidate = root / relative
    parent = candidate.parent.resolve()
    if not parent.is_relative_to(root.resolve()):
        raise BadInput(
            Reason.UNSAFE_PATH, f"{what} {candidate} would be written outside {root}; refusing"
        )
    if candidate.is_symlink():
        raise BadInput(Reason.UNSAFE_PATH, f"{what} {candidate} is a symbolic link; refusing")
    return parent / candidate.name
