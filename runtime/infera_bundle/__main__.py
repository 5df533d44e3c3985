"""``python -m infera_bundle make|check|install``: see the package docstring.

Examples::

    # on a machine with a package index: what a host with Python 3.12 and torch 2.11 lacks
    python -m infera_bundle make --out bundle --python 3.12 --part-mib 55 \\
        --host-freeze host-freeze.txt vllm==0.26.0 pydantic-settings uvloop

    # on the host (no network): check, join, install into a directory
    python3 -m infera_bundle install bundle --target /opt/infera/site
    export PYTHONPATH=/opt/infera/site
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from .parts import BundleError, Manifest, check_parts, join, split

INSTALL_SH = """#!/bin/sh
# Check, join and install this bundle without network: sh install.sh TARGET_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$here/tool${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m infera_bundle install "$here" --target "$1"
"""


def groups(directory: Path, limit_bytes: int) -> list[list[str]]:
    """Files of the bundle in groups of at most ``limit_bytes`` (one group per transfer)."""
    out: list[list[str]] = []
    size = limit_bytes + 1
    for f in sorted(directory.iterdir(), key=lambda p: p.name):
        if not f.is_file():
            continue
        n = f.stat().st_size
        if size + n > limit_bytes:
            out.append([])
            size = 0
        out[-1].append(f.name)
        size += n
    return out


def cmd_make(args: argparse.Namespace) -> int:
    from .resolve import Target, parse_freeze, pip_download, resolve

    out: Path = args.out
    wheels_dir = out / ".download"
    target = Target(python_version=args.python)
    host = parse_freeze(args.host_freeze.read_text()) if args.host_freeze else {}
    res = resolve(args.requirements, host, target, pip_download(target, wheels_dir), args.exclude)
    entries = []
    part_bytes = int(args.part_mib * 2**20)
    for name in sorted(res.wheels):
        src = res.wheels[name]
        dest = out / src.name
        shutil.copyfile(src, dest)
        entries.append(split(dest, part_bytes))
    for c in res.host_conflicts:
        print(f"warning: {c}", file=sys.stderr)
    manifest = Manifest(
        {
            "python": args.python,
            "platforms": list(target.platforms),
            "requirements": args.requirements,
            "host_conflicts": res.host_conflicts,
        },
        entries,
        {k: v for k, v in sorted(res.skipped.items())},
    )
    manifest.write(out)
    tool = out / "tool" / "infera_bundle"
    tool.mkdir(parents=True, exist_ok=True)
    for f in ("__init__.py", "__main__.py", "parts.py"):
        shutil.copyfile(Path(__file__).with_name(f), tool / f)
    (out / "install.sh").write_text(INSTALL_SH)
    if not args.keep_download:
        shutil.rmtree(wheels_dir, ignore_errors=True)
    total = sum(e.size for e in entries)
    print(f"{len(entries)} wheels, {total / 2**20:.1f} MiB, in {out}; served by the host: {len(res.skipped)}")
    for i, g in enumerate(groups(out, part_bytes + 2**20)):
        print(f"group {i}: {' '.join(g)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    manifest = Manifest.read(args.bundle)
    problems = check_parts(args.bundle, manifest)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(manifest.entries)} wheels, {len(problems)} problems")
    return 1 if problems else 0


def cmd_install(args: argparse.Namespace) -> int:
    manifest = Manifest.read(args.bundle)
    problems = check_parts(args.bundle, manifest)
    if problems:
        raise BundleError("the bundle is incomplete:\n  " + "\n  ".join(problems))
    wheels = join(args.bundle, manifest, args.bundle / "joined")
    pip = [args.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    pip += ["--disable-pip-version-check", "--upgrade", "--target", str(args.target)]
    proc = subprocess.run([*pip, *map(str, wheels)])
    if proc.returncode == 0:
        print(f"installed {len(wheels)} wheels into {args.target}")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infera_bundle", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="resolve, download and split the wheels a host lacks")
    mk.add_argument("requirements", nargs="+", help="top-level requirements, e.g. vllm==0.26.0")
    mk.add_argument("--out", type=Path, required=True)
    mk.add_argument("--python", default="3.12", help="the host's Python version")
    mk.add_argument("--host-freeze", type=Path, help="the host's `pip list --format=freeze`")
    mk.add_argument("--exclude", action="append", default=[], help="a package the host provides anyway")
    mk.add_argument("--part-mib", type=float, default=55.0, help="largest file or part, MiB")
    mk.add_argument("--keep-download", action="store_true")
    ck = sub.add_parser("check", help="check every part and file against the manifest")
    ck.add_argument("bundle", type=Path)
    ins = sub.add_parser("install", help="check, join and pip-install the bundle (no network)")
    ins.add_argument("bundle", type=Path)
    ins.add_argument("--target", type=Path, required=True)
    ins.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    try:
        return {"make": cmd_make, "check": cmd_check, "install": cmd_install}[args.cmd](args)
    except BundleError as exc:
        print(f"infera_bundle: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from .resolve import ResolveError

        if isinstance(exc, ResolveError):
            print(f"infera_bundle: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
