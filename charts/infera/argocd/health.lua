-- Argo CD health check for infera.dev/InferenceService (resource.customizations.health.infera.dev_InferenceService).
-- Lua 5.1 (Argo CD runs gopher-lua). Input: the live object `obj`. Output: {status, message}.
--   Healthy      Ready=True and status.observedGeneration == metadata.generation
--   Progressing  no status yet, generation not observed yet, Ready missing/Unknown, or Ready=False
--                with a reason that resolves by itself (RollingOut: pods starting, model loading)
--   Degraded     Ready not True and a failure reason that needs a person (InsufficientGPU,
--                ImagePullBackOff, CrashLoopBackOff, InvalidSpec, ...) on Ready or on a detailed
--                condition (ConfigReady, Scheduled, DeploymentAvailable), or Ready=False with a reason
--                it does not know; AutoscalerReady is informational and never changes the health.
--                While Ready=True (e.g. a scale-up waiting for GPUs) a detailed failure is only
--                appended to the Healthy message
--   Suspended    Ready=False with reason ScaledToZero (spec.replicas = 0 without autoscaling)
-- The reasons are the operator's (operator/docs/troubleshooting.md). Reasons in neither list count as
-- Degraded when Ready=False: an unknown failure should be seen.
local hs = {}

local failure_reasons = {
  -- ConfigReady
  InvalidSpec = true,
  ApplyFailed = true,
  ApiKeySecretNotFound = true,
  -- Scheduled
  InsufficientGPU = true,
  InsufficientResources = true,
  NoMatchingNodes = true,
  UntoleratedTaint = true,
  VolumeUnavailable = true,
  Unschedulable = true,
  -- DeploymentAvailable: containers that will not start by themselves, stuck rollouts
  CrashLoopBackOff = true,
  ImagePullBackOff = true,
  ErrImagePull = true,
  ErrImageNeverPull = true,
  InvalidImageName = true,
  CreateContainerConfigError = true,
  CreateContainerError = true,
  RunContainerError = true,
  ProgressDeadlineExceeded = true,
  ReplicaFailure = true,
}

local progressing_reasons = {
  RollingOut = true,
  DeploymentNotFound = true,
  MinimumReplicasUnavailable = true,
  Pending = true,
  NoPods = true,
  SchedulingPending = true,
}

local function condition(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  local msg = c.reason or "NoReason"
  if c.message ~= nil and c.message ~= "" then
    msg = msg .. ": " .. c.message
  end
  return msg
end

local function health(o)
  if o.status == nil then
    return "Progressing", "Waiting for the infera operator to reconcile the InferenceService"
  end
  local generation = o.metadata and o.metadata.generation
  local observed = o.status.observedGeneration
  local conditions = o.status.conditions or {}

  local ready = condition(conditions, "Ready")
  local serving = ready ~= nil and ready.status == "True"

  -- Unless the model is served, a failure on any detailed condition is reported, even while a new
  -- generation is being rolled out. While it is served (e.g. a scale-up waiting for GPUs), Ready wins.
  local failing = nil
  for _, ctype in ipairs({ "Ready", "ConfigReady", "Scheduled", "DeploymentAvailable" }) do
    local c = condition(conditions, ctype)
    if failing == nil and c ~= nil and c.status == "False" and c.reason ~= nil and failure_reasons[c.reason] then
      failing = ctype .. " is False, " .. describe(c)
    end
  end
  if failing ~= nil and not serving then
    return "Degraded", failing
  end

  if generation ~= nil and (observed == nil or observed < generation) then
    return "Progressing", "Waiting for the operator to observe generation " .. tostring(generation)
      .. " (observed " .. tostring(observed or "none") .. ")"
  end

  if ready == nil or ready.status == "Unknown" or ready.status == nil then
    if ready ~= nil then
      return "Progressing", describe(ready)
    end
    return "Progressing", "Waiting for the Ready condition"
  end
  if ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation then
    return "Progressing", "Ready describes generation " .. tostring(ready.observedGeneration)
      .. ", not yet " .. tostring(generation)
  end
  if ready.status == "True" then
    local msg = "Serving"
    if o.status.readyReplicas ~= nil then
      msg = msg .. " with " .. tostring(o.status.readyReplicas) .. "/" .. tostring(o.status.replicas or "?")
        .. " ready replicas"
    end
    if o.status.url ~= nil then
      msg = msg .. " at " .. o.status.url
    end
    if failing ~= nil then
      msg = msg .. "; " .. failing
    end
    return "Healthy", msg
  end
  -- Ready=False
  if ready.reason == "ScaledToZero" then
    return "Suspended", describe(ready)
  end
  if ready.reason ~= nil and progressing_reasons[ready.reason] then
    return "Progressing", describe(ready)
  end
  return "Degraded", describe(ready)
end

hs.status, hs.message = health(obj)
return hs
