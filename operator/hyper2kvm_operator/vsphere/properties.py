"""Reading managed objects' properties through the PropertyCollector, by explicit paths.

Every read names the property paths it wants; nothing here fetches a whole object through
pyVmomi's attribute access (which would also be one round trip per attribute).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyVmomi import vim, vmodl

from hyper2kvm_operator.vsphere.client import Connection, call
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError

_PAGE = 500  # objects per RetrievePropertiesEx page

PropertyFilterSpec = vmodl.query.PropertyCollector.FilterSpec
ObjectSpec = vmodl.query.PropertyCollector.ObjectSpec
PropertySpec = vmodl.query.PropertyCollector.PropertySpec
TraversalSpec = vmodl.query.PropertyCollector.TraversalSpec


def read(conn: Connection, ref: Any, paths: Sequence[str], what: str) -> dict[str, Any]:
    """The properties `paths` of one object: {path: value}; a path with no value is left out.
    A missing object raises VSphereError(NotFound)."""
    found = read_many(conn, [ref], {type(ref): paths}, what)
    if ref._moId not in found:
        raise VSphereError(Reason.NOT_FOUND, f"{what}: {ref._moId} does not exist")
    return found[ref._moId]


def read_many(
    conn: Connection, refs: Iterable[Any], paths: Mapping[type, Sequence[str]], what: str
) -> dict[str, dict[str, Any]]:
    """{managed object id: {path: value}} for `refs`, each read with the paths of its type."""
    objects = [ObjectSpec(obj=ref, skip=False) for ref in refs]
    if not objects:
        return {}
    specs = [PropertySpec(type=t, pathSet=list(p), all=False) for t, p in paths.items()]
    return _retrieve(conn, PropertyFilterSpec(objectSet=objects, propSet=specs), what)


def list_in(
    conn: Connection, container: Any, kind: type, paths: Sequence[str], what: str
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every `kind` object under `container` (recursively): {id: (reference, {path: value})}."""
    manager = conn.content.viewManager
    view = call(what, manager.CreateContainerView, container, [kind], True)
    try:
        traversal = TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)
        spec = PropertyFilterSpec(
            objectSet=[ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
            propSet=[PropertySpec(type=kind, pathSet=list(paths), all=False)],
        )
        found = _retrieve(conn, spec, what, keep_refs=True)
    finally:
        call(what, view.DestroyView)
    return {key: (value.pop("__ref__"), value) for key, value in found.items()}


def _retrieve(
    conn: Connection, spec: Any, what: str, *, keep_refs: bool = False
) -> dict[str, dict[str, Any]]:
    collector = conn.content.propertyCollector
    options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=_PAGE)
    result = call(what, collector.RetrievePropertiesEx, [spec], options)
    found: dict[str, dict[str, Any]] = {}
    while result is not None:
        for content in result.objects or []:
            _check_missing(content, what)
            props = {prop.name: prop.val for prop in content.propSet or []}
            if keep_refs:
                props["__ref__"] = content.obj
            found[content.obj._moId] = props
        if not result.token:
            break
        result = call(what, collector.ContinueRetrievePropertiesEx, result.token)
    return found


def _check_missing(content: Any, what: str) -> None:
    # A path the server could not read for lack of rights or session is an error, not an
    # empty value: the caller would otherwise act on half a VM.
    for missing in content.missingSet or []:
        fault = getattr(missing.fault, "fault", missing.fault)  # pyVmomi unwraps it, or not
        if isinstance(fault, vim.fault.NotAuthenticated):
            raise VSphereError(Reason.NOT_AUTHENTICATED, f"{what}: the session is not logged in")
        if isinstance(fault, vim.fault.NoPermission):
            raise VSphereError(
                Reason.NO_PERMISSION, f"{what}: no permission to read {missing.path}"
            )
