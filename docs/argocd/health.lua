-- Argo CD health checks for loraops kinds. Register each under
-- `resource.customizations.health.loraops.io_<Kind>` in argocd-cm (see docs/rollout.md).
-- The same script serves the three kinds: it reads `status.phase`, which each controller keeps.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the loraops operator"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
   and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "the operator has not observed the latest spec yet"
  return hs
end
local phase = obj.status.phase
local message = obj.status.message or phase
local healthy = { Healthy = true, Ready = true, Succeeded = true }
local progressing = { Pending = true, Running = true, Progressing = true, Verifying = true,
                      Loading = true, Evaluating = true, Deleting = true }
if healthy[phase] then
  hs.status = "Healthy"
elseif phase == "Suspended" or phase == "Paused" then
  hs.status = "Suspended"
elseif progressing[phase] then
  hs.status = "Progressing"
else -- Failed, Degraded, RolledBack
  hs.status = "Degraded"
end
hs.message = message
return hs
