"""An in-memory stand-in for the API server, for unit tests of the reconciler only.

It models what the reconciler relies on: server-side apply as the union of each field manager's
applied configuration (so a field one manager stops applying disappears unless another manager
applies it too), managedFields per manager, generation bumps on spec changes, the status
subresource, and a count of the writes.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from infera_operator.constants import FIELD_MANAGER
from infera_operator.kube import KubeError, WriteCounter

Obj = dict[str, Any]
_uids = itertools.count(1)


def deep_merge(base: Obj, over: Obj) -> Obj:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def strip_owned(other: Obj, new: Obj) -> None:
    """A forced apply takes the fields it sets away from the other managers."""
    for k, v in new.items():
        if k in ("apiVersion", "kind") or k not in other:
            continue
        if isinstance(v, dict) and isinstance(other[k], dict) and k != "metadata":
            strip_owned(other[k], v)
        elif k != "metadata":
            del other[k]


def fields_v1(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {f"f:{k}": fields_v1(v) for k, v in obj.items()}
    return {}


def _selector_matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.applied: dict[tuple[str, str, str], dict[str, Obj]] = {}  # per manager
        self.writes = WriteCounter()
        self.fail_apply: dict[str, KubeError] = {}

    # ---------------------------------------------------------------- test helpers
    def put(self, obj: Obj) -> Obj:
        """Create an object directly (as a user or another controller would)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{next(_uids)}")
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", "1")
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    def bump(self, obj: Obj) -> None:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "0")) + 1)

    # ---------------------------------------------------------------- Kube
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, namespace: str | None, label_selector: str = "") -> list[Obj]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind
            and (namespace is None or ns == namespace)
            and _selector_matches((o["metadata"].get("labels") or {}), label_selector)
        ]

    def apply(self, manifest: Obj, field_manager: str = FIELD_MANAGER, subresource: str = "") -> Obj:
        self.writes.add("apply", manifest["kind"])
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        if manifest["kind"] in self.fail_apply:
            raise self.fail_apply[manifest["kind"]]
        configs = self.applied.setdefault(key, {})
        for manager, cfg in configs.items():
            if manager != field_manager:
                strip_owned(cfg, manifest)
        configs[field_manager] = copy.deepcopy(manifest)
        live = self.objects.get(key)
        merged: Obj = {}
        for cfg in configs.values():
            merged = deep_merge(merged, cfg)
        if live is None:
            merged["metadata"]["uid"] = f"uid-{next(_uids)}"
            merged["metadata"]["generation"] = 1
            merged["metadata"]["resourceVersion"] = "1"
        else:
            for k in ("uid", "generation", "resourceVersion"):
                merged["metadata"][k] = live["metadata"][k]
            if "status" in live:
                merged["status"] = live["status"]
            if merged.get("spec") != live.get("spec"):
                merged["metadata"]["generation"] += 1
            self.bump(merged)
        merged["metadata"]["managedFields"] = [
            {"manager": m, "operation": "Apply", "fieldsV1": fields_v1({"spec": c.get("spec", {})})}
            for m, c in configs.items()
        ]
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def patch_merge(self, kind: str, namespace: str, name: str, patch: Obj, subresource: str = "") -> Obj:
        self.writes.add(f"patch{'/' + subresource if subresource else ''}", kind)
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise KubeError(404, "NotFound", f"{kind} {name} not found")
        if subresource == "status":
            patch = {"status": patch.get("status", {})}
        merged = deep_merge(obj, patch)
        self.bump(merged)
        self.objects[(kind, namespace, name)] = merged
        return copy.deepcopy(merged)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.writes.add("delete", kind)
        self.objects.pop((kind, namespace, name), None)
        self.applied.pop((kind, namespace, name), None)

    def create(self, manifest: Obj) -> Obj:
        self.writes.add("create", manifest["kind"])
        return self.put(manifest)
