"""Resolve the wheels a target host lacks, with pip, for another Python and platform than this one.

pip's resolver cannot be told "these packages are already on the target host" when it resolves
for another platform (``--target`` ignores every installed package), so this walks the
requirements itself: a requirement the host already satisfies (by its ``pip freeze``) is skipped;
any other is downloaded with ``pip download --no-deps`` for the target's tags, and the
``Requires-Dist`` of the wheel pip chose is walked in turn, markers evaluated for the target.
A requirement that rules out a wheel already chosen restarts the walk with that specifier known;
one that rules out the host's version is reported (the host's package is kept: a bundle
installed beside it must not replace, say, its numpy under its torch).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

DEFAULT_PLATFORMS = (
    "manylinux_2_39_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)


class ResolveError(Exception):
    """Resolution cannot finish: conflicts, or a requirement with no wheel for the target."""


@dataclass(frozen=True)
class Target:
    python_version: str = "3.12"
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    machine: str = "x86_64"

    def marker_env(self, extra: str = "") -> dict[str, str]:
        return {
            "python_version": ".".join(self.python_version.split(".")[:2]),
            "python_full_version": self.python_version
            if self.python_version.count(".") == 2
            else self.python_version + ".0",
            "os_name": "posix",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": self.machine,
            "platform_release": "",
            "platform_version": "",
            "implementation_name": "cpython",
            "implementation_version": self.python_version,
            "platform_python_implementation": "CPython",
            "extra": extra,
        }

    def pip_args(self) -> list[str]:
        out = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python_version]
        for p in self.platforms:
            out += ["--platform", p]
        return out


def parse_freeze(text: str) -> dict[NormalizedName, Version | None]:
    """The host's packages: ``NAME==VERSION`` lines of a ``pip freeze`` / ``pip list --format=freeze``;
    a bare ``NAME`` line is a package whose version is not known (trusted to fit)."""
    out: dict[NormalizedName, Version | None] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "@" in line:
            continue
        name, _, version = line.partition("==")
        try:
            out[canonicalize_name(name.split("[", 1)[0].strip())] = (
                Version(version.strip()) if version else None
            )
        except InvalidVersion:
            continue
    return out


def wheel_metadata(path: Path) -> tuple[NormalizedName, Version, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = HeaderParser().parsestr(zf.read(meta).decode("utf-8"))
    return canonicalize_name(msg["Name"]), Version(msg["Version"]), list(msg.get_all("Requires-Dist") or [])


def pip_download(target: Target, directory: Path, pip: list[str] | None = None) -> Callable[[str], Path]:
    """A downloader: requirement string -> the wheel pip chose for ``target`` (in ``directory``)."""
    cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--disable-pip-version-check"]

    def download(requirement: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        name = canonicalize_name(Requirement(requirement).name)
        proc = subprocess.run(
            [*cmd, *target.pip_args(), "-d", str(directory), requirement],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ResolveError(f"no wheel of {requirement!r} for {target}: {proc.stderr.strip()[-800:]}")
        for line in proc.stdout.splitlines():  # "Saved ./x.whl" or "File was already downloaded /d/x.whl"
            word = line.strip().split()[-1] if line.strip() else ""
            if word.endswith(".whl"):
                found = directory / Path(word).name
                if found.is_file():
                    return found
        matches = [p for p in directory.glob("*.whl") if parse_wheel_filename(p.name)[0] == name]
        if not matches:
            raise ResolveError(f"pip reported no wheel for {requirement!r}:\n{proc.stdout[-800:]}")
        return max(matches, key=lambda p: p.stat().st_mtime)

    return download


@dataclass
class Resolution:
    wheels: dict[NormalizedName, Path] = field(default_factory=dict)
    versions: dict[NormalizedName, Version] = field(default_factory=dict)
    skipped: dict[NormalizedName, str] = field(default_factory=dict)  # served by the host (its version)
    conflicts: list[str] = field(default_factory=list)
    host_conflicts: list[str] = field(default_factory=list)
    retry: bool = False


def resolve(
    requirements: Iterable[str],
    host: dict[NormalizedName, Version | None],
    target: Target,
    download: Callable[[str], Path],
    exclude: Iterable[str] = (),
    max_rounds: int = 8,
) -> Resolution:
    """Walk ``requirements`` (see the module docstring); raise ResolveError on conflicts.

    A package is downloaded under every specifier seen for it so far; when a later requirement
    rules out the version already chosen, the walk starts again with that specifier known
    (at most ``max_rounds`` times). A host package whose version a requirement rules out is
    kept (it cannot be changed from here) and reported in ``host_conflicts``.
    """
    known: dict[NormalizedName, SpecifierSet] = {}
    reqs = list(requirements)
    for _ in range(max_rounds):
        res = _walk(reqs, host, target, download, {canonicalize_name(x) for x in exclude}, known)
        if not res.conflicts:
            return res
        if not res.retry:
            break
    raise ResolveError("conflicts:\n  " + "\n  ".join(res.conflicts))


def _walk(
    requirements: list[str],
    host: dict[NormalizedName, Version | None],
    target: Target,
    download: Callable[[str], Path],
    excluded: set[NormalizedName],
    known: dict[NormalizedName, SpecifierSet],
) -> Resolution:
    res = Resolution()
    extras_done: dict[NormalizedName, set[str]] = {}
    queue: list[tuple[Requirement, str]] = [(Requirement(r), "the command line") for r in requirements]
    while queue:
        req, why = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in excluded:
            res.skipped.setdefault(name, "excluded")
            continue
        if name in host:
            have = host[name]
            if have is not None and not req.specifier.contains(have, prereleases=True):
                res.host_conflicts.append(f"{why} needs {req}, the host has {name} {have} (kept)")
            res.skipped.setdefault(name, str(have) if have is not None else "present")
            continue
        spec = known.setdefault(name, SpecifierSet())
        if name in res.versions:
            if not req.specifier.contains(res.versions[name], prereleases=True):
                res.conflicts.append(f"{why} needs {req}, but {name} {res.versions[name]} was chosen")
                if (spec & req.specifier) != spec:
                    known[name] = spec & req.specifier
                    res.retry = True
            new_extras = set(req.extras) - extras_done[name]
            if new_extras:  # the same wheel, asked for with more extras: walk what they add
                extras_done[name] |= new_extras
                _, version, requires = wheel_metadata(res.wheels[name])
                queue.extend(
                    _deps(
                        requires,
                        target,
                        new_extras,
                        f"{req.name}[{','.join(sorted(new_extras))}] {version}",
                        only_extras=True,
                    )
                )
            continue
        known[name] = spec = spec & req.specifier
        path = download(f"{req.name}{spec}")
        got_name, version, requires = wheel_metadata(path)
        res.wheels[name] = path
        res.versions[name] = version
        extras_done[name] = set(req.extras)
        queue.extend(_deps(requires, target, set(req.extras), f"{got_name} {version}"))
    return res


def _deps(
    requires: list[str], target: Target, extras: set[str], why: str, only_extras: bool = False
) -> list[tuple[Requirement, str]]:
    """The ``Requires-Dist`` entries that apply on ``target`` with ``extras`` (markers dropped).

    ``only_extras``: just those that an extra brings (the others were walked already).
    """
    out = []
    for line in requires:
        dep = Requirement(line)
        if dep.marker is None:
            if not only_extras:
                out.append((dep, why))
            continue
        with_extra = any(dep.marker.evaluate(target.marker_env(e)) for e in sorted(extras))
        plain = dep.marker.evaluate(target.marker_env())
        if (with_extra and not plain) or (plain and not only_extras):
            dep.marker = None
            out.append((dep, why))
    return out
