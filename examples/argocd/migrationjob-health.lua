-- Argo CD health check for hyper2kvm.io/v1alpha1 MigrationJob.
--
-- Argo CD runs it from argocd-cm, key resource.customizations.health.hyper2kvm.io_MigrationJob
-- (argocd-cm.yaml beside this file carries it verbatim). The job is the global `obj`; the
-- table returned is its health: `status` and `message`.
--
-- A MigrationJob is a one-shot task, so Healthy means "finished well": an Application of
-- MigrationJobs is Healthy once every job in it has Succeeded.
--
--   status.phase            health       message
--   (no status, no phase)   Progressing  waiting for the operator to admit the job
--   Pending, Scheduled      Progressing  the phase, the operator's reason and message
--   Queued                  Progressing  the same; after a failed attempt (status.attempt >= 1,
--                                        reason Retrying or status.retryAfter set) it says the
--                                        job waits for a retry, and for how long
--   Running, Verifying      Progressing  progress, throughput and ETA as far as known, the
--                                        attempt when it is not the first, and the node
--                                        (before the first progress read: the operator's
--                                        message)
--   Succeeded               Healthy      the operator's message
--   Failed                  Degraded     the operator's reason and message
--   Cancelled               Degraded     says the job was cancelled: its work was not done
--   any other phase         Unknown      names the phase: one this check does not know (from
--                                        a newer operator) is shown, not guessed
--
-- While a job is unfinished, its message also says when metadata.generation is ahead of
-- status.observedGeneration (a spec change the operator has not recorded yet) and when
-- spec.cancel asks for a cancel that has not happened yet. Succeeded, Failed and Cancelled
-- are final and are reported whatever the generations say: the operator never leaves them
-- and records observedGeneration only when the phase changes, so a later edit of a finished
-- job (priority, placement and the like may change) must not leave it Progressing forever.
--
-- Argo CD runs custom health checks in gopher-lua (Lua 5.1) with the base and table
-- libraries and a reduced os library only: no string or math functions, no string methods.

local hs = {}

local KNOWN_UNFINISHED = {
  Pending = true,
  Queued = true,
  Scheduled = true,
  Running = true,
  Verifying = true,
}

-- The value as a string, or nil when it is absent or empty.
local function text(value)
  if value == nil or value == "" then
    return nil
  end
  return tostring(value)
end

-- The value as a number, or nil.
local function number(value)
  if value == nil then
    return nil
  end
  return tonumber(value)
end

local function add(list, value)
  if value ~= nil then
    list[#list + 1] = value
  end
end

-- "Phase (Reason): message"; the reason only when it says more than the phase.
local function headline(phase, reason, message)
  local line = phase
  if reason ~= nil and reason ~= phase then
    line = line .. " (" .. reason .. ")"
  end
  if message ~= nil then
    line = line .. ": " .. message
  end
  return line
end

local status = obj.status or {}
local spec = obj.spec or {}
local metadata = obj.metadata or {}
local phase = text(status.phase)
local reason = text(status.reason)
local message = text(status.message)
local attempt = number(status.attempt)

if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to admit the job (no status yet)"
  return hs
end

-- Finished phases: their health, and the message when the operator gave none.
local FINISHED = {
  Succeeded = {health = "Healthy", fallback = "all disks done"},
  Failed = {health = "Degraded"},
  Cancelled = {health = "Degraded", fallback = "the job was cancelled"},
}
local finished = FINISHED[phase]
if finished ~= nil then
  hs.status = finished.health
  hs.message = headline(phase, reason, message or finished.fallback)
  return hs
end

if not KNOWN_UNFINISHED[phase] then
  hs.status = "Unknown"
  hs.message = headline("Unknown MigrationJob phase " .. phase, reason, message)
  return hs
end

local line
if phase == "Running" or phase == "Verifying" then
  local facts = {}
  add(facts, text(status.progress))
  add(facts, text(status.throughput))
  if text(status.eta) ~= nil then
    add(facts, "ETA " .. status.eta)
  end
  local where = {}
  if attempt ~= nil and attempt > 1 then
    add(where, "attempt " .. attempt)
  end
  if #facts > 0 then
    line = phase .. ": " .. table.concat(facts, ", ")
    if text(status.node) ~= nil then
      add(where, "on " .. status.node)
    end
  else
    -- Before the first progress read; the operator's message names the node.
    line = headline(phase, reason, message)
  end
  if #where > 0 then
    line = line .. " (" .. table.concat(where, ", ") .. ")"
  end
elseif phase == "Queued" and (
  (attempt ~= nil and attempt >= 1) or reason == "Retrying" or text(status.retryAfter) ~= nil
) then
  local head = "Queued for a retry"
  if attempt ~= nil and attempt >= 1 then
    head = head .. " after attempt " .. attempt
  end
  local why = reason
  if why == "Retrying" then
    why = nil -- the message says why: "attempt 1 failed (<reason>: <message>); retrying in 20s"
  end
  line = headline(head, why, message)
  if text(status.retryAfter) ~= nil then
    line = line .. " (next attempt not before " .. status.retryAfter .. ")"
  end
else
  line = headline(phase, reason, message)
end

if spec.cancel == true then
  line = "Cancel requested; " .. line
end

local generation = number(metadata.generation)
local observed = number(status.observedGeneration)
if generation ~= nil and observed ~= nil and observed < generation then
  line = "Spec generation " .. generation .. " not yet seen by the operator"
    .. " (status is of generation " .. observed .. "); " .. line
end

hs.status = "Progressing"
hs.message = line
return hs
