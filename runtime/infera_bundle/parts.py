"""Splitting files into parts, the manifest, and checking and joining them again (standard library only)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


class BundleError(Exception):
    """The bundle is incomplete or damaged; the message says which file and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


@dataclass
class Part:
    name: str
    size: int
    sha256: str


@dataclass
class Entry:
    """One wheel: kept whole (``parts`` empty) or as parts named ``<name>.partNNN``."""

    name: str
    size: int
    sha256: str
    parts: list[Part] = field(default_factory=list)


@dataclass
class Manifest:
    target: dict[str, Any]
    entries: list[Entry]
    skipped: dict[str, str] = field(default_factory=dict)  # name -> the host's version that serves it

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise BundleError(f"{path} is missing: copy the whole bundle directory")
        data = json.loads(path.read_text())
        entries = [
            Entry(e["name"], e["size"], e["sha256"], [Part(**p) for p in e.get("parts", [])])
            for e in data["entries"]
        ]
        return cls(data.get("target", {}), entries, data.get("skipped", {}))


def split(path: Path, part_bytes: int) -> Entry:
    """Replace ``path`` by parts of at most ``part_bytes`` bytes if it is larger; return its entry."""
    if part_bytes < 1:
        raise ValueError("part size must be positive")
    entry = Entry(path.name, path.stat().st_size, sha256(path))
    if entry.size <= part_bytes:
        return entry
    with path.open("rb") as src:
        index = 0
        while True:
            data = src.read(part_bytes)
            if not data:
                break
            part = path.with_name(f"{path.name}.part{index:03d}")
            part.write_bytes(data)
            entry.parts.append(Part(part.name, len(data), hashlib.sha256(data).hexdigest()))
            index += 1
    path.unlink()
    return entry


def check_parts(directory: Path, manifest: Manifest) -> list[str]:
    """Problems with the parts and whole files present (missing, wrong size, wrong checksum)."""
    problems = []
    for e in manifest.entries:
        if not e.parts:
            f = directory / e.name
            if not f.is_file() and not (directory / "joined" / e.name).is_file():
                problems.append(f"{e.name}: missing")
            continue
        joined = directory / "joined" / e.name
        if joined.is_file() and joined.stat().st_size == e.size and sha256(joined) == e.sha256:
            continue
        for p in e.parts:
            f = directory / p.name
            if not f.is_file():
                problems.append(f"{p.name}: missing")
            elif f.stat().st_size != p.size:
                problems.append(f"{p.name}: {f.stat().st_size} bytes, expected {p.size}")
            elif sha256(f) != p.sha256:
                problems.append(f"{p.name}: checksum mismatch")
    return problems


def join(directory: Path, manifest: Manifest, out: Path) -> list[Path]:
    """Every wheel whole in ``out`` (parts joined), each checked against the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    wheels = []
    for e in manifest.entries:
        dest = out / e.name
        if not (dest.is_file() and dest.stat().st_size == e.size and sha256(dest) == e.sha256):
            if e.parts:
                tmp = dest.with_suffix(dest.suffix + ".tmp")
                with tmp.open("wb") as fh:
                    for p in e.parts:
                        fh.write((directory / p.name).read_bytes())
                tmp.replace(dest)
            else:
                src = directory / e.name
                if src.resolve() != dest.resolve():
                    dest.write_bytes(src.read_bytes())
        if dest.stat().st_size != e.size or sha256(dest) != e.sha256:
            raise BundleError(f"{e.name}: joined file does not match the manifest; copy its parts again")
        wheels.append(dest)
    return wheels
