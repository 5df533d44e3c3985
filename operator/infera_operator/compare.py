"""Is a desired manifest already in place? Pure comparisons of rendered and live objects.

The API server adds defaults (``protocol: TCP``, ``dnsPolicy``, ...), drops empty values, and
rewrites quantities in canonical form (``1000m`` -> ``1``, ``1024Mi`` -> ``1Gi``). So "in place"
means: every field the operator renders is present in the live object with an equal value, where
quantities compare by amount, named list items (containers, env, volumes, ports) match by name,
and other lists match position by position with the same length.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_QUANTITY_RE = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: Decimal(1),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity's amount, or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    m = _QUANTITY_RE.match(value.strip())
    if not m:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2)]
    except (InvalidOperation, KeyError):
        return None


def _empty(value: object) -> bool:
    return value is None or value == {} or value == []


def _scalar_equal(desired: object, live: object) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return False
    # A quantity the server canonicalised; only for strings that look like quantities.
    if (
        isinstance(desired, str | int)
        and isinstance(live, str | int)
        and (isinstance(desired, str) or isinstance(live, str))
    ):
        a, b = parse_quantity(desired), parse_quantity(live)
        return a is not None and b is not None and a == b
    return False


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items)


def is_subset(desired: object, live: object) -> bool:
    """True when every field of ``desired`` is present and equal in ``live`` (see module doc)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return _empty(desired) and live is None
        return all(
            (_empty(v) and _empty(live.get(k))) or (k in live and is_subset(v, live[k]))
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return _empty(desired) and live is None
        if _named(desired) and _named(live):
            by_name = {i["name"]: i for i in live}
            order = [i["name"] for i in live if i["name"] in {d["name"] for d in desired}]
            if order != [d["name"] for d in desired]:
                return False
            return all(is_subset(d, by_name[d["name"]]) for d in desired)
        return len(desired) == len(live) and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
    return _scalar_equal(desired, live)


def differences(desired: object, live: object, path: str = "") -> list[str]:
    """Paths where ``desired`` is not in ``live`` (for logs and events; empty when is_subset)."""
    if is_subset(desired, live):
        return []
    if isinstance(desired, dict) and isinstance(live, dict):
        out: list[str] = []
        for k, v in desired.items():
            if k not in live:
                if not _empty(v):
                    out.append(f"{path}.{k}")
            else:
                out.extend(differences(v, live[k], f"{path}.{k}"))
        return out or [path or "."]
    return [path or "."]
