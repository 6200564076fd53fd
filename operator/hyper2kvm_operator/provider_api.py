"""The VSphereProvider API (hyper2kvm.io/v1alpha1): a tenant's connection to vCenter or ESXi.

A provider names a server, a Secret holding the login, and how the server's certificate is
trusted. The operator alone reads the Secret; it checks the connection and writes what it
found into the status. `crd.py` turns these models into the CRD, with the rules the API
server enforces written beside the fields they guard.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hyper2kvm_operator.api import Condition, SecretRef

KIND = "VSphereProvider"
DEFAULT_MAX_DISKS_PER_HOST = 10  # what Forklift's own measurements found best per host
PLURAL = "vsphereproviders"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "URL", "type": "string", "jsonPath": ".spec.url"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    },
    {"name": "Product", "type": "string", "jsonPath": ".status.product"},
    {"name": "Version", "type": "string", "jsonPath": ".status.version"},
    {"name": "Checked", "type": "date", "jsonPath": ".status.lastChecked"},
    {"name": "MaxPerHost", "type": "integer", "jsonPath": ".spec.maxDisksPerHost", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "priority": 1},
]


class _Api(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class VSphereProviderSpec(_Api):
    url: str = Field(
        max_length=2048,
        pattern=r"^https://[^/@\s]+(/[^\s]*)?$",
        description="https URL of vCenter or ESXi, e.g. https://vcenter.example.com "
        "(the SDK path /sdk is added when the URL has no path)",
    )
    credentialsSecretRef: SecretRef = Field(
        description="Secret with keys username and password; it must carry the label "
        "hyper2kvm.io/credentials=true (the chart's policy.credentialLabel)"
    )
    caBundle: str | None = Field(
        default=None,
        max_length=65536,
        description="PEM certificates the server's certificate must chain to",
    )
    thumbprint: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){19}((:[0-9A-Fa-f]{2}){12})?$",
        description="the server certificate's SHA-1 or SHA-256 fingerprint (AA:BB:...), "
        "pinned instead of a CA",
    )
    insecureSkipVerify: bool = Field(
        default=False, description="trust any certificate; only when said explicitly"
    )
    maxDisksPerHost: int = Field(
        default=DEFAULT_MAX_DISKS_PER_HOST,
        ge=1,
        le=100,
        description="at most this many disks read at once from one ESXi host, by all the "
        "jobs that name this provider",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.caBundle), has(self.thumbprint), self.insecureSkipVerify]"
                    ".filter(x, x).size() == 1",
                    "message": "say how the server's certificate is trusted: exactly one of "
                    "caBundle, thumbprint, or insecureSkipVerify: true",
                }
            ]
        }
    )


class VSphereProviderStatus(_Api):
    product: str | None = Field(default=None, description='e.g. "VMware vCenter Server"')
    version: str | None = Field(default=None, description='e.g. "8.0.3"')
    apiType: str | None = Field(default=None, description="VirtualCenter or HostAgent (ESXi)")
    lastChecked: str | None = Field(default=None, description="when the connection was tried")
    observedGeneration: int | None = None
    conditions: list[Condition] | None = None
