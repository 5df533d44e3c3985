"""Pure status computation: observed children -> conditions and the status block.

Conditions follow the Kubernetes API conventions: ``type``, ``status`` (True/False/Unknown),
a CamelCase ``reason`` that says why, a ``message`` for people, ``lastTransitionTime`` (changes only
when ``status`` flips) and ``observedGeneration``. ``Ready`` summarises the detailed ones:

    ConfigReady          the spec is valid, the runtime configuration and children are applied
    Scheduled            every runtime pod found a node (InsufficientGPU etc. when not)
    DeploymentAvailable  the Deployment has its minimum of ready pods; container failures
                         (ImagePullBackOff, CrashLoopBackOff, ...) surface here
    AutoscalerReady      the HPA can scale (informational: it does not gate Ready)

Everything here is deterministic in its inputs, so a reconcile with nothing changed computes the
same status and the writer skips the write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infera_operator.constants import (
    AUTOSCALER_READY,
    CONDITION_TYPES,
    CONFIG_READY,
    DEPLOYMENT_AVAILABLE,
    GPU_RESOURCE,
    READY,
    SCHEDULED,
)

Obj = dict[str, Any]

# Container waiting reasons that mean the pod will not get ready by itself.
FAILING_WAITING_REASONS = (
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
)
STATUS_KEYS = ("observedGeneration", "url", "replicas", "readyReplicas", "selector", "conditions")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""

    @property
    def true(self) -> bool:
        return self.status == "True"


@dataclass
class Observed:
    """What the reconciler saw and did, the input of the status computation."""

    name: str
    namespace: str
    generation: int
    problems: list[str] = field(default_factory=list)  # spec problems (InvalidSpec)
    apply_errors: list[str] = field(default_factory=list)  # "Deployment: <API message>"
    missing_secret: str | None = None
    config_hash: str = ""
    deployment: Obj | None = None
    pods: list[Obj] = field(default_factory=list)
    autoscaling: bool = False
    hpa: Obj | None = None
    replicas_wanted: int | None = None  # spec.replicas without autoscaling


# ---------------------------------------------------------------------- pods
def _pod_condition(pod: Obj, type_: str) -> Obj | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def classify_unschedulable(message: str) -> str:
    """A reason for the scheduler's FailedScheduling message."""
    if f"Insufficient {GPU_RESOURCE}" in message:
        return "InsufficientGPU"
    if (
        "Insufficient cpu" in message
        or "Insufficient memory" in message
        or "Insufficient ephemeral-storage" in message
    ):
        return "InsufficientResources"
    if "node affinity/selector" in message or "node(s) didn't match" in message:
        return "NoMatchingNodes"
    if "untolerated taint" in message or "had taint" in message:
        return "UntoleratedTaint"
    if "persistentvolumeclaim" in message.lower() or "volume" in message.lower():
        return "VolumeUnavailable"
    return "Unschedulable"


def _live_pods(pods: list[Obj]) -> list[Obj]:
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return sorted(live, key=lambda p: str((p.get("metadata") or {}).get("name", "")))


def scheduled_condition(obs: Observed) -> Condition:
    pods = _live_pods(obs.pods)
    if not pods:
        if obs.replicas_wanted == 0:
            return Condition(SCHEDULED, "True", "NoPodsWanted", "spec.replicas is 0")
        return Condition(SCHEDULED, "Unknown", "NoPods", "waiting for the Deployment to create pods")
    unscheduled = []
    pending = 0
    for pod in pods:
        cond = _pod_condition(pod, "PodScheduled")
        if cond is None:
            pending += 1
        elif cond.get("status") == "False":
            unscheduled.append((pod, cond))
    if unscheduled:
        pod, cond = unscheduled[0]
        msg = str(cond.get("message") or cond.get("reason") or "unschedulable").strip()
        return Condition(
            SCHEDULED,
            "False",
            classify_unschedulable(msg),
            f"{len(unscheduled)} of {len(pods)} pods cannot be scheduled: {msg}",
        )
    if pending:
        return Condition(
            SCHEDULED, "Unknown", "SchedulingPending", f"{pending} of {len(pods)} pods await scheduling"
        )
    return Condition(SCHEDULED, "True", "AllPodsScheduled", f"{len(pods)} of {len(pods)} pods scheduled")


def last_line(text: str) -> str:
    """The last non-empty line (a termination message may hold a log tail: FallbackToLogsOnError)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:512] if lines else ""


def container_problem(pods: list[Obj]) -> Condition | None:
    """The first container (by pod name) failing to start or crash-looping, as a condition."""
    for pod in _live_pods(pods):
        status = pod.get("status") or {}
        for cs in sorted(status.get("containerStatuses") or [], key=lambda c: str(c.get("name", ""))):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason not in FAILING_WAITING_REASONS:
                continue
            pod_name = (pod.get("metadata") or {}).get("name", "?")
            if reason == "CrashLoopBackOff":
                term = (cs.get("lastState") or {}).get("terminated") or {}
                detail = last_line(str(term.get("message") or ""))
                if not detail:
                    detail = f"exit code {term.get('exitCode', '?')}"
                    if term.get("reason"):
                        detail += f" ({term['reason']})"
                msg = (
                    f"container {cs.get('name')} of pod {pod_name} keeps crashing "
                    f"({cs.get('restartCount', 0)} restarts); last termination: {detail}"
                )
            else:
                detail = str(waiting.get("message") or "").strip()
                msg = f"container {cs.get('name')} of pod {pod_name}: {detail or reason}"
            return Condition(DEPLOYMENT_AVAILABLE, "False", str(reason), msg)
    return None


# ---------------------------------------------------------------------- deployment
def _dep_condition(dep: Obj, type_: str) -> Obj | None:
    for c in (dep.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def rollout_complete(dep: Obj) -> bool:
    """Like ``kubectl rollout status``: the current template runs on every wanted replica."""
    meta, spec, st = dep.get("metadata") or {}, dep.get("spec") or {}, dep.get("status") or {}
    if int(st.get("observedGeneration", 0)) < int(meta.get("generation", 0)):
        return False
    wanted = int(spec.get("replicas", 1))
    updated = int(st.get("updatedReplicas", 0))
    return (
        updated >= wanted
        and int(st.get("replicas", 0)) <= updated
        and int(st.get("availableReplicas", 0)) >= updated
    )


def serving_current_template(dep: Obj) -> bool:
    """Every pod runs the current template and at least one is available: the model the spec asks
    for is being served. A scale-up (by ``kubectl scale`` or the HPA) keeps this true; a rollout of
    a changed template does not, until no old pod is left."""
    meta, st = dep.get("metadata") or {}, dep.get("status") or {}
    if int(st.get("observedGeneration", 0)) < int(meta.get("generation", 0)):
        return False
    updated = int(st.get("updatedReplicas", 0))
    return int(st.get("replicas", 0)) <= updated and min(updated, int(st.get("availableReplicas", 0))) >= 1


def deployment_condition(obs: Observed) -> Condition:
    dep = obs.deployment
    if dep is None:
        return Condition(
            DEPLOYMENT_AVAILABLE, "Unknown", "DeploymentNotFound", "the Deployment does not exist yet"
        )
    problem = container_problem(obs.pods)
    if problem is not None:
        return problem
    st = dep.get("status") or {}
    wanted = int((dep.get("spec") or {}).get("replicas", 1))
    ready = int(st.get("readyReplicas", 0))
    progressing = _dep_condition(dep, "Progressing")
    if progressing and progressing.get("status") == "False":
        return Condition(
            DEPLOYMENT_AVAILABLE,
            "False",
            str(progressing.get("reason") or "ProgressDeadlineExceeded"),
            str(progressing.get("message", "")),
        )
    failure = _dep_condition(dep, "ReplicaFailure")
    if failure and failure.get("status") == "True":
        return Condition(DEPLOYMENT_AVAILABLE, "False", "ReplicaFailure", str(failure.get("message", "")))
    available = _dep_condition(dep, "Available")
    if available is None:
        return Condition(
            DEPLOYMENT_AVAILABLE, "Unknown", "Pending", "the Deployment controller has not reported yet"
        )
    status = "True" if available.get("status") == "True" else "False"
    reason = str(
        available.get("reason")
        or ("MinimumReplicasAvailable" if status == "True" else "MinimumReplicasUnavailable")
    )
    return Condition(DEPLOYMENT_AVAILABLE, status, reason, f"{ready} of {wanted} replicas ready")


# ---------------------------------------------------------------------- config, autoscaler
def config_condition(obs: Observed) -> Condition:
    if obs.problems:
        return Condition(CONFIG_READY, "False", "InvalidSpec", "; ".join(obs.problems))
    if obs.apply_errors:
        return Condition(CONFIG_READY, "False", "ApplyFailed", "; ".join(obs.apply_errors))
    if obs.missing_secret:
        return Condition(
            CONFIG_READY,
            "False",
            "ApiKeySecretNotFound",
            f"Secret {obs.missing_secret} (spec.apiKeySecretRef) does not exist; pods cannot start without it",
        )
    return Condition(
        CONFIG_READY, "True", "ConfigApplied", f"runtime configuration {obs.config_hash} applied"
    )


def autoscaler_condition(obs: Observed) -> Condition:
    if not obs.autoscaling:
        wanted = obs.replicas_wanted if obs.replicas_wanted is not None else 1
        return Condition(
            AUTOSCALER_READY, "True", "AutoscalingDisabled", f"replicas fixed at {wanted} by spec.replicas"
        )
    if obs.hpa is None:
        return Condition(
            AUTOSCALER_READY, "Unknown", "HPANotFound", "the HorizontalPodAutoscaler does not exist yet"
        )
    conds = {c.get("type"): c for c in (obs.hpa.get("status") or {}).get("conditions") or []}
    for type_ in ("AbleToScale", "ScalingActive"):
        c = conds.get(type_)
        if c is not None and c.get("status") == "False":
            return Condition(
                AUTOSCALER_READY, "False", str(c.get("reason") or f"Not{type_}"), str(c.get("message", ""))
            )
    active = conds.get("ScalingActive")
    if active is None:
        return Condition(AUTOSCALER_READY, "Unknown", "Pending", "the HPA controller has not reported yet")
    return Condition(
        AUTOSCALER_READY, "True", str(active.get("reason") or "ScalingActive"), str(active.get("message", ""))
    )


def ready_condition(
    obs: Observed, config: Condition, scheduled: Condition, available: Condition
) -> Condition:
    if not config.true:
        return Condition(READY, "False", config.reason, config.message)
    if obs.replicas_wanted == 0:
        return Condition(READY, "False", "ScaledToZero", "spec.replicas is 0: nothing serves the model")
    dep = obs.deployment
    if available.status == "False" and available.reason in FAILING_WAITING_REASONS:
        return Condition(READY, "False", available.reason, available.message)
    if dep is not None and available.true and serving_current_template(dep):
        ready = int((dep.get("status") or {}).get("readyReplicas", 0))
        if rollout_complete(dep):
            return Condition(READY, "True", "Serving", f"{ready} ready replicas serve the model")
        wanted = int((dep.get("spec") or {}).get("replicas", 1))
        return Condition(
            READY, "True", "Serving", f"{ready} of {wanted} replicas ready; serving while the rest start"
        )
    if scheduled.status == "False":
        return Condition(READY, "False", scheduled.reason, scheduled.message)
    if available.status == "False":
        return Condition(READY, "False", available.reason, available.message)
    if dep is None:
        return Condition(READY, "False", "DeploymentNotFound", available.message)
    st = dep.get("status") or {}
    wanted = int((dep.get("spec") or {}).get("replicas", 1))
    return Condition(
        READY,
        "False",
        "RollingOut",
        f"{int(st.get('updatedReplicas', 0))} of {wanted} pods updated, {int(st.get('availableReplicas', 0))} available",
    )


def compute_conditions(obs: Observed) -> list[Condition]:
    """All conditions, in CONDITION_TYPES order."""
    config = config_condition(obs)
    if obs.problems:
        unknown = "the spec is invalid"
        scheduled = Condition(SCHEDULED, "Unknown", "InvalidSpec", unknown)
        available = Condition(DEPLOYMENT_AVAILABLE, "Unknown", "InvalidSpec", unknown)
        autoscaler = Condition(AUTOSCALER_READY, "Unknown", "InvalidSpec", unknown)
    else:
        scheduled = scheduled_condition(obs)
        available = deployment_condition(obs)
        autoscaler = autoscaler_condition(obs)
    ready = ready_condition(obs, config, scheduled, available)
    by_type = {c.type: c for c in (ready, config, scheduled, available, autoscaler)}
    return [by_type[t] for t in CONDITION_TYPES]


# ---------------------------------------------------------------------- status block
def merge_conditions(old: list[Obj] | None, new: list[Condition], generation: int, now: str) -> list[Obj]:
    """Condition dicts; ``lastTransitionTime`` is kept from ``old`` unless the status flipped."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        prev = previous.get(c.type)
        ltt = prev.get("lastTransitionTime") if prev and prev.get("status") == c.status else None
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": ltt or now,
                "observedGeneration": generation,
            }
        )
    return out


def compute_status(
    obs: Observed,
    old_status: Obj | None,
    now: str,
    url: str,
    selector: str,
    throughput: Obj | None = None,
) -> Obj:
    """The status block the operator owns; ``throughput`` (from the metrics collector) is merged
    in when given, and otherwise left out so that the writer never touches it."""
    old_status = old_status or {}
    dep_status = (obs.deployment or {}).get("status") or {}
    status: Obj = {
        "observedGeneration": obs.generation,
        "url": url,
        "replicas": int(dep_status.get("replicas", 0)),
        "readyReplicas": int(dep_status.get("readyReplicas", 0)),
        "selector": selector,
        "conditions": merge_conditions(
            old_status.get("conditions"), compute_conditions(obs), obs.generation, now
        ),
    }
    if throughput is not None:
        status["throughput"] = dict(throughput)
    return status


def status_patch(old_status: Obj | None, new_status: Obj) -> Obj | None:
    """A JSON merge patch for the keys of ``new_status`` that differ from ``old_status``, or None.

    Keys absent from ``new_status`` (e.g. ``throughput``, owned by the metrics collector) are never
    in the patch, so two writers of different keys do not fight.
    """
    old_status = old_status or {}
    patch = {k: v for k, v in new_status.items() if old_status.get(k) != v}
    return {"status": patch} if patch else None


def condition(status: Obj | None, type_: str) -> Obj | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def transition_events(old_status: Obj | None, new_status: Obj) -> list[tuple[str, str, str]]:
    """(type Normal|Warning, reason, message) for condition changes worth an Event.

    One event when Ready changes status or reason; one per detailed condition that newly turned
    False or changed its failure reason (e.g. Scheduled -> InsufficientGPU).
    """
    events: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for type_ in CONDITION_TYPES:
        new = condition(new_status, type_)
        if new is None:
            continue
        old = condition(old_status, type_)
        same = old is not None and old.get("status") == new["status"] and old.get("reason") == new["reason"]
        if same:
            continue
        if type_ == READY:
            if new["status"] == "True":
                events.append(("Normal", "Ready", new["message"]))
            else:
                events.append(
                    (
                        "Warning" if new["reason"] not in ("RollingOut", "ScaledToZero") else "Normal",
                        new["reason"],
                        new["message"],
                    )
                )
            seen.add(new["reason"])
        elif new["status"] == "False" and new["reason"] not in seen:
            events.append(("Warning", new["reason"], f"{type_}: {new['message']}"))
            seen.add(new["reason"])
    return events
