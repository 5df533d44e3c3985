-- Argo CD health check for infera.dev/InferenceService (resource.customizations.health.infera.dev_InferenceService).
-- Lua 5.1 (Argo CD runs gopher-lua). Input: the live object `obj`. Output: {status, message}.
--   Healthy      Ready=True and status.observedGeneration == metadata.generation
--   Progressing  no status yet, generation not observed yet, Ready missing/Unknown, or Ready=False
--                with a reason that resolves by itself (pods starting, model loading, scaling)
--   Degraded     Ready=False with a failure reason that needs a person (InsufficientGPU,
--                ImagePullBackOff, CrashLoopBackOff, InvalidSpec, ...), or one of those reasons on a
--                detailed condition (Scheduled, DeploymentAvailable, ConfigReady, AutoscalerReady)
--   Suspended    Ready and scaled to zero on purpose (spec.replicas = 0 without autoscaling)
-- Reasons not in either list count as Degraded when Ready=False: an unknown failure should be seen.
local hs = {}

local failure_reasons = {
  InsufficientGPU = true,
  Unschedulable = true,
  ImagePullBackOff = true,
  ErrImagePull = true,
  InvalidImageName = true,
  CrashLoopBackOff = true,
  CreateContainerConfigError = true,
  CreateContainerError = true,
  RunContainerError = true,
  OOMKilled = true,
  InvalidSpec = true,
  InvalidConfig = true,
  InvalidModel = true,
  ModelLoadFailed = true,
  RuntimeFailed = true,
  SecretNotFound = true,
  ProgressDeadlineExceeded = true,
  ReconcileError = true,
  FailedCreate = true,
  AutoscalerFailed = true,
}

local transient_reasons = {
  Pending = true,
  Progressing = true,
  Reconciling = true,
  Creating = true,
  Deploying = true,
  Scheduling = true,
  ContainerCreating = true,
  PodInitializing = true,
  Starting = true,
  Loading = true,
  ModelLoading = true,
  WaitingForPods = true,
  PodsNotReady = true,
  MinimumReplicasUnavailable = true,
  NewReplicaSetAvailable = true,
  ReplicaSetUpdated = true,
  RollingUpdate = true,
  Updating = true,
  Scaling = true,
  ScalingUp = true,
  ScalingDown = true,
  Terminating = true,
  AwaitingMetrics = true,
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

  -- A failure on any detailed condition is reported even while the generation is being rolled out.
  for _, ctype in ipairs({ "Ready", "ConfigReady", "Scheduled", "DeploymentAvailable", "AutoscalerReady" }) do
    local c = condition(conditions, ctype)
    if c ~= nil and c.status == "False" and c.reason ~= nil and failure_reasons[c.reason] then
      return "Degraded", ctype .. " is False, " .. describe(c)
    end
  end

  if generation ~= nil and (observed == nil or observed < generation) then
    return "Progressing", "Waiting for the operator to observe generation " .. tostring(generation)
      .. " (observed " .. tostring(observed or "none") .. ")"
  end

  local ready = condition(conditions, "Ready")
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
    local spec = o.spec or {}
    if spec.autoscaling == nil and spec.replicas == 0 then
      return "Suspended", "Scaled to zero replicas"
    end
    local msg = "Serving"
    if o.status.readyReplicas ~= nil then
      msg = msg .. " with " .. tostring(o.status.readyReplicas) .. "/" .. tostring(o.status.replicas or "?")
        .. " ready replicas"
    end
    if o.status.url ~= nil then
      msg = msg .. " at " .. o.status.url
    end
    return "Healthy", msg
  end
  -- Ready=False
  if ready.reason ~= nil and transient_reasons[ready.reason] then
    return "Progressing", describe(ready)
  end
  return "Degraded", describe(ready)
end

hs.status, hs.message = health(obj)
return hs
