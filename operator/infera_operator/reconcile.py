"""The level-based reconcile of one InferenceService: read, render, apply what differs, report.

``reconcile()`` is synchronous and talks to the API only through :class:`~infera_operator.kube.Kube`,
so unit tests drive it with an in-memory fake and integration tests with the real API server.
It is idempotent: with nothing changed it sends no write at all (children whose desired manifest
is already in place are not applied; the status is patched only when it differs; Events are posted
only on condition transitions).

Order of work:

1. GET the InferenceService (fresh: the status we compare against must be current).
2. Validate the spec; an invalid spec leaves the children as they are (a bad edit must not take a
   serving model down) and reports ``InvalidSpec``.
3. For each child in apply order (ConfigMap, Deployment, Service, HPA): GET it; apply it with
   server-side apply (field manager ``infera-operator``, force) when it is missing, when its
   ``infera.dev/desired-hash`` differs from the rendered one (the spec changed), or when a rendered
   field drifted (someone edited or removed it). The HPA is deleted when autoscaling is off.
4. Read the Deployment, its pods and the HPA, compute the status (``status.py``) and patch the
   changed keys of it; post an Event per condition transition.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infera_operator import compare, render
from infera_operator import status as st
from infera_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_DESIRED_HASH,
    FIELD_MANAGER,
    HANDOVER_FIELD_MANAGER,
    KIND,
    MANAGED_BY,
)
from infera_operator.kube import Kube, KubeError

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass
class ReconcileResult:
    """What one reconcile did (for logs, metrics of the operator itself, and tests)."""

    found: bool = True
    applied: list[str] = field(default_factory=list)  # kinds applied
    deleted: list[str] = field(default_factory=list)  # kinds deleted
    status_written: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # apply failures; the caller retries
    ready: bool = False

    @property
    def wrote(self) -> bool:
        return bool(self.applied or self.deleted or self.status_written or self.events)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owned_by(obj: Obj, cr: Obj) -> bool:
    uid = cr["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def needs_apply(desired: Obj, live: Obj | None) -> list[str]:
    """Why ``desired`` must be applied over ``live`` (empty: it is in place)."""
    if live is None:
        return ["missing"]
    want = desired["metadata"].get("annotations", {}).get(ANNOTATION_DESIRED_HASH)
    have = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DESIRED_HASH)
    if want != have:
        return ["spec changed"]
    return compare.differences(desired, live)


def manager_owns(live: Obj, manager: str, *path: str) -> bool:
    """Whether ``manager``'s Apply entry in managedFields owns the field at ``path``."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        node = entry.get("fieldsV1") or {}
        for key in path:
            node = node.get(f"f:{key}")
            if not isinstance(node, dict):
                break
        else:
            return True
    return False


def hand_over_replicas(kube: Kube, desired: Obj, live: Obj | None) -> bool:
    """Before the operator stops applying ``spec.replicas`` (autoscaling switched on), make a
    second field manager co-own the current value, so that dropping it from the operator's apply
    does not reset the Deployment to 1 replica; the HPA then takes it over. Returns whether it
    wrote."""
    if live is None or "replicas" in desired["spec"]:
        return False
    if not manager_owns(live, FIELD_MANAGER, "spec", "replicas"):
        return False
    current = (live.get("spec") or {}).get("replicas")
    if current is None:
        return False
    meta = desired["metadata"]
    kube.apply(
        {
            "apiVersion": desired["apiVersion"],
            "kind": desired["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": current},
        },
        field_manager=HANDOVER_FIELD_MANAGER,
    )
    return True


def event_manifest(cr: Obj, type_: str, reason: str, message: str, now: str) -> Obj:
    meta = cr["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": cr.get("apiVersion", "infera.dev/v1alpha1"),
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def reconcile(
    kube: Kube,
    namespace: str,
    name: str,
    cfg: render.OperatorConfig | None = None,
    now: str | None = None,
) -> ReconcileResult:
    """Bring the children and the status of InferenceService ``namespace/name`` in line with its spec."""
    cfg = cfg or render.OperatorConfig()
    now = now or now_rfc3339()
    result = ReconcileResult()
    cr = kube.get(KIND, namespace, name)
    if cr is None or (cr.get("metadata") or {}).get("deletionTimestamp"):
        # Gone or going: the garbage collector removes the children (ownerReferences).
        result.found = cr is not None
        return result
    meta = cr["metadata"]
    spec = cr.get("spec") or {}
    generation = int(meta.get("generation", 0))
    obs = st.Observed(
        name=name,
        namespace=namespace,
        generation=generation,
        autoscaling=render.autoscaling_spec(spec) is not None,
        replicas_wanted=render.desired_replicas(spec),
    )
    obs.problems = render.validate(name, spec)

    if not obs.problems:
        try:
            children = render.render_children(cr, cfg)
        except render.InvalidSpecError as e:  # validate() covers it; keep the guard
            obs.problems = e.problems
            children = []
        for kind, desired in children:
            child_name = render.config_map_name(name) if kind == "ConfigMap" else name
            try:
                live = kube.get(kind, namespace, child_name)
                if desired is None:
                    if live is not None and owned_by(live, cr):
                        kube.delete(kind, namespace, child_name)
                        result.deleted.append(kind)
                        log.info("%s/%s: deleted %s (autoscaling is off)", namespace, name, kind)
                    live = None
                else:
                    why = needs_apply(desired, live)
                    if why:
                        if kind == "Deployment" and hand_over_replicas(kube, desired, live):
                            log.info(
                                "%s/%s: handed spec.replicas of the Deployment over to the HPA",
                                namespace,
                                name,
                            )
                        live = kube.apply(desired)
                        result.applied.append(kind)
                        log.info("%s/%s: applied %s (%s)", namespace, name, kind, ", ".join(why[:5]))
            except KubeError as e:
                obs.apply_errors.append(f"{kind} {child_name}: {e.message or e.reason}")
                result.errors.append(f"{kind}: {e}")
                log.warning("%s/%s: %s %s failed: %s", namespace, name, kind, child_name, e)
                live = None
            if kind == "Deployment":
                obs.deployment = live
                if desired is not None:
                    template = desired["spec"]["template"]["metadata"]
                    obs.config_hash = template["annotations"][ANNOTATION_CONFIG_HASH]
            elif kind == "HorizontalPodAutoscaler":
                obs.hpa = live
        obs.pods = kube.list("Pod", namespace, render.selector_string(name))

    old_status = cr.get("status") or {}
    new_status = st.compute_status(
        obs,
        old_status,
        now,
        url=render.service_url(name, namespace),
        selector=render.selector_string(name),
    )
    patch = st.status_patch(old_status, new_status)
    if patch is not None:
        kube.patch_merge(KIND, namespace, name, patch, subresource="status")
        result.status_written = True
    ready = st.condition(new_status, "Ready")
    result.ready = bool(ready and ready["status"] == "True")
    for type_, reason, message in st.transition_events(old_status, new_status):
        try:
            kube.create(event_manifest(cr, type_, reason, message, now))
        except KubeError as e:  # an Event is best effort
            log.warning("%s/%s: posting event %s failed: %s", namespace, name, reason, e)
        result.events.append((type_, reason, message))
    return result
