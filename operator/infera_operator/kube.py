"""A thin Kubernetes REST client over raw dicts, with server-side apply, and a write counter.

The reconciler talks to the API through the small :class:`Kube` protocol so that it can be
driven by an in-memory fake in unit tests. :class:`RestKube` implements it on top of the
``kubernetes`` client's configuration, authentication and connection pool, but sends and
receives plain JSON dicts (no generated models), so manifests rendered by ``render.py`` go to
the server exactly as rendered.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from infera_operator import __version__
from infera_operator.constants import FIELD_MANAGER

log = logging.getLogger(__name__)

Obj = dict[str, Any]

USER_AGENT = f"infera-operator/{__version__}"

# kind -> (apiVersion, plural); the kinds the operator reads or writes.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "Pod": ("v1", "pods"),
    "Secret": ("v1", "secrets"),
    "Event": ("v1", "events"),
    "Deployment": ("apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "horizontalpodautoscalers"),
    "InferenceService": ("infera.dev/v1alpha1", "inferenceservices"),
}


class KubeError(Exception):
    """A request the API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, body: Obj | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class Kube(Protocol):
    """What the reconciler needs from the API server."""

    def get(self, kind: str, namespace: str, name: str) -> Obj | None: ...

    def list(self, kind: str, namespace: str | None, label_selector: str = "") -> list[Obj]: ...

    def apply(self, manifest: Obj, field_manager: str = FIELD_MANAGER, subresource: str = "") -> Obj: ...

    def patch_merge(self, kind: str, namespace: str, name: str, patch: Obj, subresource: str = "") -> Obj: ...

    def delete(self, kind: str, namespace: str, name: str) -> None: ...

    def create(self, manifest: Obj) -> Obj: ...


def object_path(kind: str, namespace: str | None, name: str = "", subresource: str = "") -> str:
    api_version, plural = KINDS[kind]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace, safe='')}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


@dataclass
class WriteCounter:
    """Counts the write requests this process sent, by verb and kind (for logs and tests)."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, verb: str, kind: str) -> None:
        with self._lock:
            self.counts[f"{verb} {kind}"] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


class RestKube:
    """:class:`Kube` over the ``kubernetes`` client's ApiClient (sync; call from worker threads)."""

    def __init__(self, api_client: Any, timeout_s: float = 30.0) -> None:
        self.api = api_client
        self.api.user_agent = USER_AGENT
        self.timeout_s = timeout_s
        self.writes = WriteCounter()

    @classmethod
    def from_environment(cls) -> RestKube:
        """In-cluster service account if there is one, else the kubeconfig (KUBECONFIG)."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = 32
        return cls(client.ApiClient(configuration))

    # ------------------------------------------------------------------ raw
    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        url_path = path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, header_params, _, _ = self.api.param_serialize(
            method, url_path, header_params=headers, auth_settings=["BearerToken"]
        )
        resp = self.api.call_api(
            m, url, header_params=header_params, body=body, _request_timeout=self.timeout_s
        )
        raw = resp.read() or b""
        try:
            data = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            data = {"message": raw.decode("utf-8", "replace")}
        if not 200 <= resp.status <= 299:
            raise KubeError(
                resp.status, str(data.get("reason") or resp.reason), str(data.get("message", "")), data
            )
        return data if isinstance(data, dict) else {"items": data}

    # ------------------------------------------------------------------ Kube
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.request("GET", object_path(kind, namespace, name))
        except KubeError as e:
            if e.not_found:
                return None
            raise

    def list(self, kind: str, namespace: str | None, label_selector: str = "") -> list[Obj]:
        query = {"labelSelector": label_selector} if label_selector else None
        items = self.request("GET", object_path(kind, namespace), query=query).get("items") or []
        api_version = KINDS[kind][0]
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return list(items)

    def apply(self, manifest: Obj, field_manager: str = FIELD_MANAGER, subresource: str = "") -> Obj:
        """Server-side apply (force: this operator is the authority for the fields it sets)."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        self.writes.add("apply", kind)
        return self.request(
            "PATCH",
            object_path(kind, meta.get("namespace"), meta["name"], subresource),
            query={"fieldManager": field_manager, "force": "true"},
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def patch_merge(self, kind: str, namespace: str, name: str, patch: Obj, subresource: str = "") -> Obj:
        self.writes.add(f"patch{'/' + subresource if subresource else ''}", kind)
        return self.request(
            "PATCH",
            object_path(kind, namespace, name, subresource),
            query={"fieldManager": FIELD_MANAGER},
            body=patch,
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.writes.add("delete", kind)
        try:
            self.request(
                "DELETE", object_path(kind, namespace, name), body={"propagationPolicy": "Background"}
            )
        except KubeError as e:
            if not e.not_found:
                raise

    def create(self, manifest: Obj) -> Obj:
        kind = manifest["kind"]
        self.writes.add("create", kind)
        return self.request(
            "POST",
            object_path(kind, manifest["metadata"].get("namespace")),
            query={"fieldManager": FIELD_MANAGER},
            body=manifest,
        )
