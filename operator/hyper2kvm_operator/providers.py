"""Checking a VSphereProvider: log in as it says, ask the server what it is, write the answer.

The operator alone reads the provider's Secret (only one its owner marked for migrations);
the login runs in a thread, off Kopf's event loop, with a deadline. What the status says is
built by a pure function, so a provider that stays Ready keeps the time it became Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator import provider_api, tenancy
from hyper2kvm_operator.job_state import Operator
from hyper2kvm_operator.vsphere import client, logins
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from hyper2kvm_operator.vsphere.logins import Login
from hyper2kvm_worker import http_probe
from hyper2kvm_worker.errors import WorkerError
from hyper2kvm_worker.protocol import Limits

CHECK_TIMEOUT_SECONDS = 60.0  # a login plus one call; the client's own timeouts are shorter
CHECK_INTERVAL_SECONDS = 300.0  # and whenever the provider's spec changes


@dataclass(frozen=True)
class ServerFacts:
    product: str
    version: str
    api_type: str


class CheckFailed(Exception):
    """The server could not be used: `reason` is the Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


Probe = Callable[[Login], ServerFacts]  # blocking: logs in, asks, logs out


def login_of(spec: provider_api.VSphereProviderSpec, secret: Mapping[str, str]) -> Login:
    """The login a provider describes, with the username and password from its Secret."""
    missing = [key for key in ("username", "password") if not secret.get(key)]
    if missing:
        raise CheckFailed(
            cond.INCOMPLETE_CREDENTIALS,
            f"Secret {spec.credentialsSecretRef.name} lacks {' and '.join(missing)}",
        )
    return Login(
        url=spec.url,
        username=secret["username"].strip(),
        password=secret["password"].rstrip("\n"),
        ca_bundle=spec.caBundle,
        thumbprint=spec.thumbprint,
        insecure=spec.insecureSkipVerify,
    )


def vsphere_probe(login: Login) -> ServerFacts:
    """Log in to vCenter or ESXi as `login` says, note what it is, and log out."""
    try:
        connection = logins.connect(login)
    except VSphereError as error:
        raise CheckFailed(error.reason, error.message) from None
    about = connection.about
    # A failed logout leaves the facts standing; the server ends the session when idle.
    with contextlib.suppress(VSphereError):
        client.logout(connection)
    return ServerFacts(product=about.product, version=about.version, api_type=about.api_type)


def provider_status(
    previous: Mapping[str, Any],
    outcome: ServerFacts | CheckFailed,
    now: str,
    generation: int | None,
) -> dict[str, Any]:
    """The status after a check: Ready with the server's facts, or not Ready saying why."""
    conditions = list(previous.get("conditions") or [])
    if isinstance(outcome, CheckFailed):
        conditions = cond.set_condition(
            conditions, cond.READY, False, outcome.reason, outcome.message, now, generation
        )
        facts: dict[str, Any] = {}
    else:
        message = f"{outcome.product} {outcome.version} ({outcome.api_type})"
        conditions = cond.set_condition(
            conditions, cond.READY, True, cond.CONNECTED, message, now, generation
        )
        facts = {
            "product": outcome.product,
            "version": outcome.version,
            "apiType": outcome.api_type,
        }
    return {**facts, "lastChecked": now, "observedGeneration": generation, "conditions": conditions}


async def marked_secret(op: Operator, namespace: str, name: str) -> dict[str, str]:
    """The provider Secret's data, only when its owner marked it for migrations; CheckFailed
    otherwise."""
    found = await op.kube.secret(namespace, name)
    labels, data = found if found is not None else (None, {})
    label = op.settings.policy.credential_label
    refusal = tenancy.unmarked_secret(name, namespace, labels, label, "to let providers log in")
    if refusal:
        raise CheckFailed(cond.CREDENTIALS_REFUSED, refusal)
    return data


async def check_address(op: Operator, url: str) -> None:
    """CheckFailed PolicyViolation when `url`'s host resolves into a network the cluster
    denies to network sources (the node, its metadata services, the cluster's own ranges):
    a provider must not make the operator a tenant's way into them."""
    rules = op.policy()
    limits = Limits(http_allow=list(rules.http_allow), http_deny=list(rules.http_deny))
    try:
        await asyncio.to_thread(http_probe.check_address, url, limits)
    except WorkerError as refused:
        reason = cond.POLICY_VIOLATION if refused.permanent else Reason.UNREACHABLE
        raise CheckFailed(reason, refused.message) from None


async def check(op: Operator, body: Mapping[str, Any], probe: Probe) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    outcome: ServerFacts | CheckFailed
    try:
        spec = provider_api.VSphereProviderSpec.model_validate(body.get("spec") or {})
        await check_address(op, spec.url)
        login = login_of(spec, await marked_secret(op, namespace, spec.credentialsSecretRef.name))
        outcome = await asyncio.wait_for(asyncio.to_thread(probe, login), CHECK_TIMEOUT_SECONDS)
    except CheckFailed as error:
        outcome = error
    except TimeoutError:
        outcome = CheckFailed(
            Reason.TIMEOUT, f"no answer from the server within {CHECK_TIMEOUT_SECONDS:.0f}s"
        )
    status = provider_status(body.get("status") or {}, outcome, op.now(), meta.get("generation"))
    await op.kube.patch_status(provider_api.PLURAL, namespace, name, status)
