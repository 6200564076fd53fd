"""Failure classification: every way a job can end badly, with its exit code and reason.

The operator decides whether to retry from the exit code alone (and shows the reason
to the user), so the classes here are the contract between worker and operator.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of `hyper2kvm-worker`; documented in README.md."""

    OK = 0
    INTERNAL = 1  # a bug: report it
    USAGE = 2  # bad command line (argparse's own code)
    PERMANENT = 3  # bad input: retrying cannot help
    TRANSIENT = 75  # EX_TEMPFAIL: a retry may succeed
    CANCELLED = 143  # 128 + SIGTERM


class Reason(enum.StrEnum):
    """Machine-readable reasons; the operator copies them into status conditions."""

    SOURCE_NOT_FOUND = "SourceNotFound"
    INVALID_IMAGE = "InvalidImage"
    UNSAFE_PATH = "UnsafePath"
    UNSUPPORTED = "Unsupported"
    INVALID_JOB = "InvalidJob"
    OUTPUT_EXISTS = "OutputExists"
    OUTPUT_NOT_WRITABLE = "OutputNotWritable"
    INSUFFICIENT_SPACE = "InsufficientSpace"
    SOURCE_UNREACHABLE = "SourceUnreachable"
    VERIFICATION_FAILED = "VerificationFailed"
    TOOL_FAILED = "ToolFailed"
    POLICY_VIOLATION = "PolicyViolation"  # the cluster's policy forbids what the job asks
    UNTRUSTED_SERVER = "UntrustedServer"  # an SSH host key or TLS certificate not pinned
    AUTHENTICATION_FAILED = "AuthenticationFailed"  # the server refused the credentials
    SESSION_EXPIRED = "SessionExpired"  # a vSphere session cookie refused: log in again
    CANCELLED = "Cancelled"
    INTERNAL = "InternalError"


class WorkerError(Exception):
    """A failure with a one-line message that tells the user what is wrong and what to do."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def permanent(self) -> bool:
        return self.exit_code is ExitCode.PERMANENT

    def replacing(self, old: str, new: str) -> WorkerError:
        """The same failure, its message naming `new` where it named `old`."""
        if old not in self.message:
            return self
        copy = type(self).__new__(type(self))
        WorkerError.__init__(copy, self.reason, self.message.replace(old, new))
        return copy


class BadInput(WorkerError):
    """The job or its source is wrong; the same job will fail the same way again."""

    exit_code = ExitCode.PERMANENT


class TransientFailure(WorkerError):
    """Something outside the job failed (a tool, the network, storage); a retry may work."""

    exit_code = ExitCode.TRANSIENT


class Cancelled(WorkerError):
    """The job was asked to stop (SIGTERM or SIGINT)."""

    exit_code = ExitCode.CANCELLED

    def __init__(self, message: str = "cancelled by signal; no output was written") -> None:
        super().__init__(Reason.CANCELLED, message)
