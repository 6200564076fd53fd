"""What went wrong talking to vSphere, as one exception type with a reason.

Every function of the package raises `VSphereError` and nothing else, so a caller decides
on `reason` (and `transient`) alone. Messages name the server, the object and the fault,
never a password, a session cookie or a session key.
"""

from __future__ import annotations

import enum
import http.client
import socket
import ssl

from pyVmomi import vim, vmodl


class Reason(enum.StrEnum):
    INVALID_LOGIN = "InvalidLogin"  # the server refused the username or password
    CERTIFICATE_MISMATCH = "CertificateMismatch"  # not the CA, not the pinned thumbprint
    UNREACHABLE = "Unreachable"  # no TCP connection, or it broke: transient
    TIMEOUT = "Timeout"  # the server did not answer in time: transient
    NOT_AUTHENTICATED = "NotAuthenticated"  # the session is gone (expired, terminated)
    NO_PERMISSION = "NoPermission"  # logged in, but the role lacks a privilege
    NOT_FOUND = "NotFound"  # no such VM, datacenter, or session
    AMBIGUOUS = "Ambiguous"  # a name that more than one VM carries
    UNSUPPORTED = "Unsupported"  # a VM this migration refuses (see refusals.py)
    INVALID_ARGUMENT = "InvalidArgument"  # a bad URL, thumbprint or reference from the caller
    TASK_FAILED = "TaskFailed"  # a vSphere task ended in error
    SERVER_FAULT = "ServerFault"  # any other fault the server returned


TRANSIENT = frozenset({Reason.UNREACHABLE, Reason.TIMEOUT})


class VSphereError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{message} [{reason}]")
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying as it is: the network or the server's load, not the request."""
        return self.reason in TRANSIENT


def classify(exc: BaseException, where: str) -> VSphereError:
    """`exc` (from pyVmomi, ssl or the socket) as a VSphereError; `where` says what was being
    done ("connect to vc.example.com:443", "find VM web01")."""
    if isinstance(exc, VSphereError):
        return exc
    reason, what = _reason(exc)
    return VSphereError(reason, f"{where}: {what}")


def _reason(exc: BaseException) -> tuple[Reason, str]:
    # The order matters: SSL errors are OSErrors, and timeouts are OSErrors too.
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
        return (
            Reason.CERTIFICATE_MISMATCH,
            f"the server's certificate is not trusted ({detail or 'verification failed'})",
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return Reason.TIMEOUT, "no answer in time"
    if isinstance(exc, ssl.SSLError):
        return Reason.UNREACHABLE, f"TLS failed ({exc.reason})"
    if isinstance(exc, OSError | http.client.HTTPException):
        return Reason.UNREACHABLE, _plain(exc)
    if isinstance(exc, vim.fault.InvalidLogin):
        return Reason.INVALID_LOGIN, "the server refused the username or password"
    if isinstance(exc, vim.fault.NotAuthenticated):
        return Reason.NOT_AUTHENTICATED, "the session is not (or no longer) logged in"
    if isinstance(exc, vim.fault.NoPermission):
        privilege = getattr(exc, "privilegeId", None)
        return Reason.NO_PERMISSION, f"permission denied (needs {privilege or 'a privilege'})"
    if isinstance(exc, vmodl.fault.ManagedObjectNotFound | vim.fault.NotFound):
        return Reason.NOT_FOUND, _fault_text(exc)
    if isinstance(exc, vmodl.fault.HostCommunication):
        return Reason.UNREACHABLE, _fault_text(exc)
    if isinstance(exc, vmodl.fault.InvalidArgument):
        return Reason.INVALID_ARGUMENT, _fault_text(exc)
    if isinstance(exc, vmodl.MethodFault):
        return Reason.SERVER_FAULT, _fault_text(exc)
    return Reason.SERVER_FAULT, f"{type(exc).__name__}: {_plain(exc)}"


def _fault_text(fault: BaseException) -> str:
    name = type(fault).__name__.rsplit(".", 1)[-1]
    message = getattr(fault, "msg", None) or ""
    return f"{name}: {message}" if message else name


def _plain(exc: BaseException) -> str:
    # OSError's str carries errno text and the address, nothing secret; cut it short anyway.
    return (str(exc) or type(exc).__name__)[:300]
