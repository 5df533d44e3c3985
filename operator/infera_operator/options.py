"""The operator's settings: command-line flags of ``python -m infera_operator`` and INFERA_* env vars.

Flags win over the environment. Environment variables (all optional):

    INFERA_RUNTIME_IMAGE                  runtime image when spec.runtime.image is not set
    INFERA_PROMETHEUS_URL                 query this Prometheus for throughput instead of scraping pods
    INFERA_METRICS_INTERVAL_SECONDS       how often throughput is measured (default 15)
    INFERA_METRICS_WINDOW_SECONDS         rate window of the throughput (default 60)
    INFERA_STATUS_MIN_INTERVAL_SECONDS    least time between throughput status writes (default 10)
    INFERA_STATUS_MAX_INTERVAL_SECONDS    most time a drifting throughput goes unwritten (default 120)
    INFERA_RESYNC_INTERVAL_SECONDS        how often every InferenceService is reconciled anyway (default 60)
    INFERA_WATCH_NAMESPACES               comma-separated namespaces, as repeated --namespace
    INFERA_LIVENESS_ENDPOINT              as --liveness, e.g. http://0.0.0.0:8080/healthz
    INFERA_LOG_FORMAT                     json (default) or text
    INFERA_LOG_LEVEL                      debug, info (default), warning or error
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infera_operator.constants import DEFAULT_RUNTIME_IMAGE

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


class OptionsError(ValueError):
    """An environment variable or flag has an unusable value."""


@dataclass(frozen=True)
class OperatorOptions:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    standalone: bool = False
    liveness: str | None = None
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    prometheus_url: str | None = None
    metrics_interval_s: float = 15.0
    metrics_window_s: float = 60.0
    status_min_interval_s: float = 10.0
    status_max_interval_s: float = 120.0
    resync_interval_s: float = 60.0
    log_format: str = "json"
    log_level: str = "info"

    @property
    def clusterwide(self) -> bool:
        return self.all_namespaces or not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorOptions:
        env = os.environ if env is None else env

        def seconds(key: str, default: float) -> float:
            raw = env.get(key, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise OptionsError(f"{key}={raw!r} is not a number of seconds") from None
            if value <= 0:
                raise OptionsError(f"{key}={raw!r} must be greater than 0")
            return value

        def choice(key: str, default: str, allowed: tuple[str, ...]) -> str:
            value = env.get(key, "").strip().lower() or default
            if value not in allowed:
                raise OptionsError(f"{key}={value!r} must be one of {', '.join(allowed)}")
            return value

        namespaces = tuple(n.strip() for n in env.get("INFERA_WATCH_NAMESPACES", "").split(",") if n.strip())
        return cls(
            namespaces=namespaces,
            liveness=env.get("INFERA_LIVENESS_ENDPOINT") or None,
            runtime_image=env.get("INFERA_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
            prometheus_url=env.get("INFERA_PROMETHEUS_URL") or None,
            metrics_interval_s=seconds("INFERA_METRICS_INTERVAL_SECONDS", 15.0),
            metrics_window_s=seconds("INFERA_METRICS_WINDOW_SECONDS", 60.0),
            status_min_interval_s=seconds("INFERA_STATUS_MIN_INTERVAL_SECONDS", 10.0),
            status_max_interval_s=seconds("INFERA_STATUS_MAX_INTERVAL_SECONDS", 120.0),
            resync_interval_s=seconds("INFERA_RESYNC_INTERVAL_SECONDS", 60.0),
            log_format=choice("INFERA_LOG_FORMAT", "json", LOG_FORMATS),
            log_level=choice("INFERA_LOG_LEVEL", "info", LOG_LEVELS),
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m infera_operator",
        description="The infera operator: reconciles InferenceService resources (infera.dev/v1alpha1).",
        epilog="Environment variables INFERA_* set the defaults; see infera_operator/options.py.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeat for more); default: all namespaces",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)"
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="run without kopf peering (one operator replica; no peering objects needed)",
    )
    p.add_argument(
        "--liveness", metavar="URL", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    p.add_argument("--runtime-image", metavar="IMAGE", help="default runtime image (INFERA_RUNTIME_IMAGE)")
    p.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="read throughput from this Prometheus instead of scraping pods (INFERA_PROMETHEUS_URL)",
    )
    p.add_argument("--log-format", choices=LOG_FORMATS, help="INFERA_LOG_FORMAT")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="INFERA_LOG_LEVEL")
    return p


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> OperatorOptions:
    """Options from flags over the environment; raises OptionsError or SystemExit (usage)."""
    args = build_parser().parse_args(argv)
    base = OperatorOptions.from_env(env)
    namespaces = (
        tuple(args.namespaces) if args.namespaces else (() if args.all_namespaces else base.namespaces)
    )
    return OperatorOptions(
        namespaces=namespaces,
        all_namespaces=bool(args.all_namespaces) or not namespaces,
        standalone=bool(args.standalone),
        liveness=args.liveness or base.liveness,
        runtime_image=args.runtime_image or base.runtime_image,
        prometheus_url=args.prometheus_url or base.prometheus_url,
        metrics_interval_s=base.metrics_interval_s,
        metrics_window_s=base.metrics_window_s,
        status_min_interval_s=base.status_min_interval_s,
        status_max_interval_s=base.status_max_interval_s,
        resync_interval_s=base.resync_interval_s,
        log_format=args.log_format or base.log_format,
        log_level=args.log_level or base.log_level,
    )
