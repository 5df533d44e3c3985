"""Render the CRD reference (operator/docs/crd-reference.md) from the CRD schemas in crds/*.yaml.

    python operator/docs/gen_crd_reference.py           # rewrite operator/docs/crd-reference.md
    python operator/docs/gen_crd_reference.py --check   # exit 1 if the committed file is stale

The output depends only on the CRD files, so a test can regenerate it and compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
OUT = REPO / "operator" / "docs" / "crd-reference.md"


def _cell(text: object) -> str:
    """Markdown table cell: one line, pipes escaped."""
    s = " ".join(str(text).split())
    return s.replace("|", "\\|")


def _code(value: object) -> str:
    s = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"`{s}`"


def _type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    t = str(schema.get("type", "any"))
    if t == "array":
        return f"[]{_type(schema.get('items', {}))}"
    if (
        t == "object"
        and "additionalProperties" in schema
        and isinstance(schema["additionalProperties"], dict)
    ):
        inner = schema["additionalProperties"]
        return f"map[string]{_type(inner) if 'type' in inner else 'any'}"
    if "format" in schema:
        return f"{t} ({schema['format']})"
    return t


def _constraints(schema: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "enum" in schema:
        out.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    for key, label in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
    ]:
        if key in schema:
            out.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        out.append(f"pattern {_code(schema['pattern'])}")
    if schema.get("x-kubernetes-list-type") == "map":
        out.append(
            "list keyed by " + ", ".join(_code(k) for k in schema.get("x-kubernetes-list-map-keys", []))
        )
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        out.append("free-form")
    for rule in schema.get("x-kubernetes-validations", []):
        msg = rule.get("message") or rule.get("messageExpression") or rule["rule"]
        out.append(f"rule: {msg}")
    return out


def _fields(
    schema: dict[str, Any], prefix: str, required: set[str]
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, sub, name in required
        if sub.get("type") == "object" and "properties" in sub:
            yield from _fields(sub, path, set(sub.get("required", [])))
        elif sub.get("type") == "array" and "properties" in sub.get("items", {}):
            items = sub["items"]
            yield from _fields(items, f"{path}[]", set(items.get("required", [])))


def _field_table(schema: dict[str, Any], prefix: str) -> list[str]:
    lines = ["| field | type | required | default | description |", "| --- | --- | --- | --- | --- |"]
    for path, sub, req in _fields(schema, prefix, set(schema.get("required", []))):
        desc = sub.get("description", "")
        cons = _constraints(sub)
        if cons:
            desc = f"{desc} ({'; '.join(cons)})" if desc else "; ".join(cons)
        default = _code(sub["default"]) if "default" in sub else ""
        lines.append(
            f"| `{path}` | {_cell(_type(sub))} | {'yes' if req else ''} | {_cell(default)} | {_cell(desc)} |"
        )
    return lines


def render_crd(crd: dict[str, Any]) -> list[str]:
    spec = crd["spec"]
    names = spec["names"]
    lines: list[str] = []
    for version in spec["versions"]:
        gv = f"{spec['group']}/{version['name']}"
        lines += [f"## {names['kind']} ({gv})", ""]
        lines += [
            "| | |",
            "| --- | --- |",
            f"| API version | `{gv}` |",
            f"| kind | `{names['kind']}` |",
            f"| scope | {spec['scope']} |",
            f"| plural / singular | `{names['plural']}` / `{names.get('singular', '')}` |",
        ]
        if names.get("shortNames"):
            lines.append(f"| short names | {', '.join(_code(n) for n in names['shortNames'])} |")
        if names.get("categories"):
            lines.append(f"| categories | {', '.join(_code(n) for n in names['categories'])} |")
        flags = [f for f in ("served", "storage") if version.get(f)]
        lines.append(f"| version | {', '.join(flags) or 'not served'} |")
        subs = version.get("subresources", {})
        if subs:
            parts = []
            if "status" in subs:
                parts.append("status")
            if "scale" in subs:
                sc = subs["scale"]
                parts.append(
                    f"scale (replicas `{sc['specReplicasPath']}`, status `{sc['statusReplicasPath']}`, "
                    f"selector `{sc.get('labelSelectorPath', '')}`)"
                )
            lines.append(f"| subresources | {_cell(', '.join(parts))} |")
        lines.append("")
        root = version["schema"]["openAPIV3Schema"]
        if root.get("description"):
            lines += [" ".join(root["description"].split()), ""]
        for rule in root.get("x-kubernetes-validations", []):
            lines += [f"Validation: {' '.join(str(rule.get('message', rule['rule'])).split())}", ""]
        cols = version.get("additionalPrinterColumns", [])
        if cols:
            lines += ["### `kubectl get` columns", "", "| column | from | shown |", "| --- | --- | --- |"]
            for c in cols:
                shown = "with `-o wide`" if c.get("priority", 0) > 0 else "always"
                lines.append(f"| {_cell(c['name'])} | `{_cell(c['jsonPath'])}` | {shown} |")
            lines.append("")
        for part in ("spec", "status"):
            sub = root.get("properties", {}).get(part)
            if sub is None:
                continue
            lines += [f"### {part}", ""]
            if sub.get("description"):
                lines += [" ".join(sub["description"].split()), ""]
            for rule in sub.get("x-kubernetes-validations", []):
                msg = rule.get("message") or rule.get("messageExpression") or rule["rule"]
                lines.append(f"- Validation: {' '.join(str(msg).split())}")
            if sub.get("x-kubernetes-validations"):
                lines.append("")
            lines += [*_field_table(sub, part), ""]
    return lines


def render(crd_dir: Path = CRDS) -> str:
    files = sorted(crd_dir.glob("*.yaml"))
    if not files:
        raise SystemExit(f"no CRDs in {crd_dir}")
    lines = [
        "# CRD reference",
        "",
        "<!-- Generated by operator/docs/gen_crd_reference.py from crds/*.yaml; do not edit by hand. -->",
        "",
        "Every field of the custom resources, with type, default, limits and validation rules, as the",
        "API server enforces them. Examples: `e2e/examples/`.",
        "",
    ]
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                lines += render_crd(doc)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed reference is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(
                f"{OUT.relative_to(REPO)} is stale: run python operator/docs/gen_crd_reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
