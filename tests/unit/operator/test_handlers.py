"""kopf wiring: nothing that puts a finalizer on objects, storage that writes nothing to them."""

from __future__ import annotations

import kopf
from kopf._core.intents.handlers import ChangingHandler, SpawningHandler

import infera_operator.handlers as handlers


def _all_handlers() -> list[object]:
    registry = kopf.get_default_registry()
    out: list[object] = []
    for reg in (registry._changing, registry._spawning, registry._watching):
        for resource_registry in [reg]:
            out.extend(resource_registry._handlers)
    return out


def test_registered_handlers_and_no_finalizer() -> None:
    hs = [h for h in _all_handlers() if getattr(h, "fn", None) is not None]
    fns = {getattr(h.fn, "__name__", "") for h in hs}  # type: ignore[attr-defined]
    assert {"reconcile_handler", "track", "deployment_changed", "pod_changed"} <= fns
    assert not [h for h in hs if isinstance(h, SpawningHandler)], "timers/daemons make kopf add finalizers"
    assert not [h for h in hs if isinstance(h, ChangingHandler) and h.requires_finalizer]
    reasons = {h.reason for h in hs if isinstance(h, ChangingHandler) and h.fn is handlers.reconcile_handler}
    assert {str(r) for r in reasons} >= {"create", "update"}


def test_memory_storages_write_nothing_into_the_patch() -> None:
    body = kopf.Body({"metadata": {"uid": "u1", "name": "n", "namespace": "ns"}, "spec": {"a": 1}})
    patch = kopf.Patch()
    progress = handlers.MemoryProgressStorage()
    record: kopf.ProgressRecord = {"started": "now", "retries": 1}
    progress.store(key=kopf.HandlerId("h"), record=record, body=body, patch=patch)
    progress.touch(body=body, patch=patch, value="x")
    assert progress.fetch(key=kopf.HandlerId("h"), body=body) == record
    diffbase = handlers.MemoryDiffBaseStorage()
    essence = diffbase.build(body=body)
    diffbase.store(body=body, patch=patch, essence=essence)
    assert diffbase.fetch(body=body) == essence
    assert not patch
    progress.forget("u1")
    diffbase.forget("u1")
    assert progress.fetch(key=kopf.HandlerId("h"), body=body) is None
    assert diffbase.fetch(body=body) is None
