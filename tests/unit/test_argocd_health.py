"""The Argo CD health check for MigrationJobs, run by a real Lua 5.1 the way Argo CD runs it.

Argo CD evaluates `resource.customizations.health.<group>_<kind>` with gopher-lua (Lua 5.1):
the object is the global `obj`, the chunk's return value is the health, and only the base and
table libraries (and a reduced os) are open, no string or math library. The driver below gives
the script that same world. The sample statuses are rendered by the operator's own status
code, so the check is tested against what the operator really writes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hyper2kvm_operator import api, status
from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator.api import Phase
from hyper2kvm_worker.protocol import DiskProgress, JobState, Progress

pytestmark = pytest.mark.needs("lua5.1")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "argocd"
HEALTH_LUA = EXAMPLES / "migrationjob-health.lua"
ARGOCD_CM = EXAMPLES / "argocd-cm.yaml"
CM_KEY = "resource.customizations.health.hyper2kvm.io_MigrationJob"
# The statuses Argo CD accepts from a health script; anything else becomes Unknown.
ARGOCD_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
NOW = "2025-06-01T10:00:00.000Z"
RETRY_AFTER = "2025-06-01T10:00:20.000Z"
MIB = 1024 * 1024

DRIVER = """
local object = OBJECT
local write = io.write
local chunk, problem = loadfile(arg[1])
if chunk == nil then
  write("load-error\\n", problem)
  return
end
-- What Argo CD gives a health script from argocd-cm (util/lua/lua.go): the package, base and
-- table libraries and a reduced os library, and the object as the global obj.
local sandbox = {
  obj = object,
  table = table,
  os = {clock = os.clock, date = os.date, difftime = os.difftime, time = os.time},
}
for _, name in ipairs({
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
  "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack",
  "xpcall",
}) do
  sandbox[name] = _G[name]
end
sandbox._G = sandbox
setfenv(chunk, sandbox)
-- Without the string library, strings have no methods either.
getmetatable("").__index = nil
local ok, hs = pcall(chunk)
if not ok then
  write("runtime-error\\n", tostring(hs))
  return
end
if type(hs) ~= "table" then
  write("not-a-table\\n", type(hs))
  return
end
write("table\\n", tostring(hs.status), "\\n", tostring(hs.message))
"""


# --------------------------------------------------------------------- Lua and its runner


def lua_string(value: str) -> str:
    """A Lua string literal holding exactly the UTF-8 bytes of `value`."""
    out = []
    for byte in value.encode():
        if 32 <= byte < 127 and byte not in (ord('"'), ord("\\")):
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_literal(value: Any) -> str:
    """A Lua expression for a JSON-like value, as Argo CD hands objects to Lua (nil for null)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, dict):
        fields = (f"[{lua_string(str(k))}] = {lua_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(fields) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    raise TypeError(f"no Lua literal for {value!r}")


@dataclass(frozen=True)
class Health:
    status: str
    message: str


@pytest.fixture(scope="module")
def lua() -> str:
    # Argo CD runs health checks with Lua 5.1, so the check is tested with it.
    path = shutil.which("lua5.1")
    assert path is not None  # the suite checks its needs before it starts
    return path


def run(lua: str, obj: Any, script: Path = HEALTH_LUA) -> tuple[str, str]:
    """What the driver says: the result's kind, then its status and message (or the error)."""
    done = subprocess.run(
        [lua, "-", str(script)],
        input=DRIVER.replace("OBJECT", lua_literal(obj)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    kind, _, rest = done.stdout.partition("\n")
    return kind, rest


def assess(lua: str, obj: Any) -> Health:
    kind, rest = run(lua, obj)
    assert kind == "table", f"the health check did not return a table: {kind}: {rest}"
    health_status, _, message = rest.partition("\n")
    assert health_status in ARGOCD_HEALTH, health_status
    return Health(health_status, message)


# ------------------------------------------------------------------------------ samples


def job(state: dict[str, Any] | None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    """A MigrationJob as Argo CD sees it, with the operator's finalizer and annotations."""
    body: dict[str, Any] = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {
            "name": "web01",
            "namespace": "migrations",
            "generation": generation,
            "finalizers": ["hyper2kvm.io/operator"],
            "annotations": {"hyper2kvm.io/last-handled-configuration": '{"spec": {}}'},
        },
        "spec": {
            "operation": "convert",
            "disks": [
                {
                    "name": "disk0",
                    "source": {"pvc": {"claimName": "vmware-exports", "path": "web01/a.vmdk"}},
                    "output": {"pvc": {"claimName": "kvm-images"}, "path": "web01/a.qcow2"},
                }
            ],
            "verify": True,
            "retries": 3,
            **spec,
        },
    }
    if state is not None:
        body["status"] = state
    return body


def moved(
    before: dict[str, Any] | None,
    phase: Phase,
    reason: str,
    message: str = "",
    generation: int = 1,
    **fields: Any,
) -> dict[str, Any]:
    """The status after the operator's move to `phase`, checked against the API's model."""
    current = dict(before or {})
    patch = status.transition(current, phase, NOW, generation, reason, message)
    merged = {**current, **patch, **fields}
    merged = {key: value for key, value in merged.items() if value is not None}
    api.MigrationJobStatus.model_validate(merged)
    return merged


def progress(state: JobState, percent: float) -> dict[str, Any]:
    return status.progress_fields(
        Progress(
            state=state,
            percent=percent,
            bytes_done=int(percent * 10 * MIB),
            bytes_total=1000 * MIB,
            rate_bytes_per_second=512.0 * MIB,
            eta_seconds=200.0,
            disks=[DiskProgress(name="disk0", phase="converting", bytes_done=1, bytes_total=2)],
        )
    )


QUEUED = moved(
    None, Phase.QUEUED, cond.QUEUED, "waiting for a free worker slot", queuedTime=NOW, attempt=0
)
SCHEDULED = moved(
    QUEUED,
    Phase.SCHEDULED,
    cond.SCHEDULED,
    "attempt 1 placed on node-1",
    node="node-1",
    pod="web01-1",
    attempt=1,
    startTime=NOW,
)
RUNNING = moved(
    SCHEDULED,
    Phase.RUNNING,
    cond.RUNNING,
    "worker running on node-1",
    **progress(JobState.RUNNING, 42.4),
)
RETRYING = moved(
    RUNNING,
    Phase.QUEUED,
    cond.RETRYING,
    "attempt 1 failed (ToolFailed: qemu-img exited with 1); retrying in 20s",
    retryAfter=RETRY_AFTER,
)
SUCCEEDED = moved(
    RUNNING, Phase.SUCCEEDED, cond.COMPLETED, "all disks done", progress="100%", eta=None
)
FAILED_TEXT = "attempt 4 failed (NbdkitFailed: nbdkit died); no retries left"


# -------------------------------------------------------------------------------- tests


def test_no_status_is_waiting_for_the_operator(lua: str) -> None:
    health = assess(lua, job(None))
    assert health.status == "Progressing"
    assert "waiting for the operator" in health.message.lower()
    assert assess(lua, job({})).status == "Progressing"
    assert "waiting for the operator" in assess(lua, job({"phase": ""})).message.lower()


def test_pending_is_progressing(lua: str) -> None:
    health = assess(lua, job(moved(None, Phase.PENDING, "Accepted", "accepted by the operator")))
    assert health == Health("Progressing", "Pending (Accepted): accepted by the operator")


def test_queued_is_progressing_with_the_reason(lua: str) -> None:
    assert assess(lua, job(QUEUED)) == Health(
        "Progressing", "Queued: waiting for a free worker slot"
    )
    waiting = moved(QUEUED, Phase.QUEUED, cond.NO_CAPACITY, "no worker node has a free slot")
    health = assess(lua, job(waiting))
    assert health == Health("Progressing", "Queued (NoCapacity): no worker node has a free slot")
    assert "retry" not in health.message


def test_queued_after_a_failed_attempt_says_it_is_retrying(lua: str) -> None:
    health = assess(lua, job(RETRYING))
    assert health.status == "Progressing"
    assert health.message.startswith("Queued for a retry after attempt 1: attempt 1 failed")
    assert "ToolFailed: qemu-img exited with 1" in health.message
    assert health.message.endswith(f"(next attempt not before {RETRY_AFTER})")
    # Still waiting for the retry, now for want of a slot: the operator's latest reason shows.
    no_slot = moved(RETRYING, Phase.QUEUED, cond.NO_CAPACITY, "no worker node has a free slot")
    health = assess(lua, job(no_slot))
    assert health.status == "Progressing"
    assert health.message.startswith("Queued for a retry after attempt 1 (NoCapacity): no worker")
    # The attempt number alone is enough to tell a retry from a first wait.
    bare = {"phase": "Queued", "attempt": 2, "message": "waiting"}
    assert assess(lua, job(bare)).message == "Queued for a retry after attempt 2: waiting"


def test_scheduled_is_progressing(lua: str) -> None:
    health = assess(lua, job(SCHEDULED))
    assert health == Health("Progressing", "Scheduled: attempt 1 placed on node-1")


def test_running_shows_progress_throughput_and_eta(lua: str) -> None:
    health = assess(lua, job(RUNNING))
    assert health == Health("Progressing", "Running: 42%, 512.0 MiB/s, ETA 3m20s (on node-1)")


def test_running_before_the_first_progress_read(lua: str) -> None:
    started = moved(SCHEDULED, Phase.RUNNING, cond.RUNNING, "worker running on node-1")
    health = assess(lua, job(started))
    assert health == Health("Progressing", "Running: worker running on node-1")
    second = {**started, "attempt": 2}
    assert assess(lua, job(second)).message == "Running: worker running on node-1 (attempt 2)"


def test_running_a_later_attempt_names_it(lua: str) -> None:
    second = {**RUNNING, "attempt": 2}
    assert assess(lua, job(second)).message.endswith("(attempt 2, on node-1)")


def test_verifying_is_progressing(lua: str) -> None:
    verifying = moved(
        RUNNING,
        Phase.VERIFYING,
        cond.VERIFYING,
        "worker running on node-1",
        **progress(JobState.VERIFYING, 97.0),
    )
    health = assess(lua, job(verifying))
    assert health == Health("Progressing", "Verifying: 97%, 512.0 MiB/s, ETA 3m20s (on node-1)")


def test_succeeded_is_healthy(lua: str) -> None:
    assert assess(lua, job(SUCCEEDED)) == Health("Healthy", "Succeeded (Completed): all disks done")


def test_failed_is_degraded_with_the_reason(lua: str) -> None:
    failed = moved(RUNNING, Phase.FAILED, cond.RETRIES_EXHAUSTED, FAILED_TEXT)
    health = assess(lua, job(failed))
    assert health == Health("Degraded", f"Failed (RetriesExhausted): {FAILED_TEXT}")
    permanent = moved(RUNNING, Phase.FAILED, "BadVmdk", "grain table past the end of the file")
    health = assess(lua, job(permanent))
    assert health == Health("Degraded", "Failed (BadVmdk): grain table past the end of the file")


def test_cancelled_is_degraded_and_says_cancelled(lua: str) -> None:
    cancelled = moved(RUNNING, Phase.CANCELLED, cond.CANCELLED, "cancelled by spec.cancel")
    health = assess(lua, job(cancelled, cancel=True))
    assert health == Health("Degraded", "Cancelled: cancelled by spec.cancel")
    health = assess(lua, job({"phase": "Cancelled"}))
    assert health.status == "Degraded"
    assert "cancelled" in health.message.lower()


def test_every_phase_of_the_api_has_a_health(lua: str) -> None:
    expected = {
        Phase.PENDING: "Progressing",
        Phase.QUEUED: "Progressing",
        Phase.SCHEDULED: "Progressing",
        Phase.RUNNING: "Progressing",
        Phase.VERIFYING: "Progressing",
        Phase.SUCCEEDED: "Healthy",
        Phase.FAILED: "Degraded",
        Phase.CANCELLED: "Degraded",
    }
    assert set(expected) == set(Phase), "a new phase needs a decision in migrationjob-health.lua"
    for phase, health_status in expected.items():
        health = assess(lua, job({"phase": phase.value}))
        assert health.status == health_status, phase
        assert phase.value in health.message, health.message


def test_an_unknown_phase_is_unknown(lua: str) -> None:
    health = assess(lua, job({"phase": "Paused", "reason": "Maintenance", "message": "later"}))
    assert health == Health("Unknown", "Unknown MigrationJob phase Paused (Maintenance): later")


def test_a_spec_change_not_yet_observed_is_progressing(lua: str) -> None:
    # generation 2: the operator recorded its last phase change at generation 1.
    health = assess(lua, job(RUNNING, generation=2))
    assert health.status == "Progressing"
    assert health.message.startswith("Spec generation 2 not yet seen by the operator")
    assert "status is of generation 1" in health.message
    assert health.message.endswith("Running: 42%, 512.0 MiB/s, ETA 3m20s (on node-1)")
    observed = moved(RUNNING, Phase.VERIFYING, cond.VERIFYING, "verifying", generation=2)
    assert "not yet seen" not in assess(lua, job(observed, generation=2)).message


def test_finished_phases_do_not_wait_for_the_generation(lua: str) -> None:
    # The operator records observedGeneration only on a phase change, and a finished job has
    # none left: a later edit (priority, placement) must not make it Progressing for good.
    assert assess(lua, job(SUCCEEDED, generation=3)).status == "Healthy"
    failed = moved(RUNNING, Phase.FAILED, cond.RETRIES_EXHAUSTED, FAILED_TEXT)
    assert assess(lua, job(failed, generation=3)).status == "Degraded"


def test_a_requested_cancel_is_progressing_until_it_happens(lua: str) -> None:
    health = assess(lua, job(RUNNING, generation=2, cancel=True))
    assert health.status == "Progressing"
    assert "Cancel requested; Running: 42%" in health.message


def test_text_passes_through_unchanged(lua: str) -> None:
    tricky = 'quote " backslash \\ tab \t newline \n umlaut ü euro €'
    health = assess(lua, job({"phase": "Failed", "reason": "Odd", "message": tricky}))
    assert health == Health("Degraded", f"Failed (Odd): {tricky}")


def test_the_driver_withholds_the_string_and_math_libraries(lua: str, tmp_path: Path) -> None:
    # So the tests above prove the check does without them, as Argo CD requires.
    for body in (
        'return {status = string.format("%s", "Healthy")}',
        'return {status = ("Healthy"):upper()}',
        "return {status = tostring(math.floor(1.5))}",
    ):
        script = tmp_path / "bad.lua"
        script.write_text(body + "\n")
        kind, problem = run(lua, job(None), script)
        assert kind == "runtime-error", (body, kind, problem)


def test_the_script_uses_no_library_argo_cd_leaves_out() -> None:
    code = [line.split("--", 1)[0] for line in HEALTH_LUA.read_text().splitlines()]
    used = re.findall(r"\b(string|math|io|debug|require)\b\s*[.(]", "\n".join(code))
    assert used == []


def test_argocd_cm_carries_the_script_verbatim() -> None:
    manifest = yaml.safe_load(ARGOCD_CM.read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("v1", "ConfigMap")
    assert manifest["metadata"]["name"] == "argocd-cm"
    assert manifest["metadata"]["namespace"] == "argocd"
    assert list(manifest["data"]) == [CM_KEY]
    assert manifest["data"][CM_KEY].encode() == HEALTH_LUA.read_bytes(), (
        "argocd-cm.yaml and migrationjob-health.lua differ: copy the script into the ConfigMap"
    )
