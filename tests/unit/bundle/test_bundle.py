"""The offline bundle: resolution against a host's packages, splitting, checking and joining."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from infera_bundle.__main__ import groups, main
from infera_bundle.parts import BundleError, Manifest, check_parts, join, split
from infera_bundle.resolve import ResolveError, Target, parse_freeze, resolve


def fake_wheel(directory: Path, name: str, version: str, requires: list[str] = ()) -> Path:  # type: ignore[assignment]
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
        zf.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        zf.writestr(
            f"{name.replace('-', '_')}-{version}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/RECORD", "")
    return path


class FakeIndex:
    """A downloader over fake wheels: the newest version that fits the specifier."""

    def __init__(self, tmp: Path, packages: dict[str, dict[str, list[str]]]) -> None:
        self.tmp = tmp
        self.packages = packages
        self.asked: list[str] = []

    def __call__(self, requirement: str) -> Path:
        from packaging.requirements import Requirement

        req = Requirement(requirement)
        self.asked.append(requirement)
        versions = self.packages[canonicalize_name(req.name)]
        fits = [v for v in versions if req.specifier.contains(v)]
        if not fits:
            raise ResolveError(f"no wheel of {requirement!r}")
        best = max(fits, key=Version)
        return fake_wheel(self.tmp, req.name, best, versions[best])


def test_resolution_skips_what_the_host_has_and_follows_markers_and_extras(tmp_path: Path) -> None:
    index = FakeIndex(
        tmp_path,
        {
            "vllm": {
                "0.26.0": [
                    "torch==2.11.0",
                    "fastapi[standard]>=0.1",
                    "pywin32; sys_platform == 'win32'",
                    "tomli; python_version < '3.11'",
                    "numba; platform_machine == 'x86_64'",
                ]
            },
            "fastapi": {"0.2": ["starlette>=1", "uvicorn; extra == 'standard'", "rich; extra == 'all'"]},
            "starlette": {"1.0": [], "1.5": []},
            "uvicorn": {"0.30": []},
            "numba": {"0.65": []},
        },
    )
    host = parse_freeze("torch==2.11.0+cu130\nnumpy==2.5.2\n# comment\n-e git+x#egg=y\n")
    res = resolve(["vllm==0.26.0"], host, Target("3.12"), index)
    assert sorted(res.wheels) == ["fastapi", "numba", "starlette", "uvicorn", "vllm"]
    assert res.versions[canonicalize_name("starlette")] == Version("1.5")
    assert res.skipped == {"torch": "2.11.0+cu130"}
    assert not any("pywin32" in a or "tomli" in a or "rich" in a for a in index.asked)


def test_a_host_version_that_does_not_fit_is_kept_and_reported(tmp_path: Path) -> None:
    index = FakeIndex(tmp_path, {"vllm": {"0.26.0": ["torch==2.11.0"]}})
    res = resolve(["vllm==0.26.0"], parse_freeze("torch==2.13.0\nnumpy"), Target(), index)
    assert res.skipped == {"torch": "2.13.0"}
    assert res.host_conflicts == ["vllm 0.26.0 needs torch==2.11.0, the host has torch 2.13.0 (kept)"]
    res = resolve(["vllm==0.26.0"], {}, Target(), index, exclude=["torch"])
    assert res.skipped == {"torch": "excluded"}


def test_a_later_stricter_requirement_restarts_with_it_known(tmp_path: Path) -> None:
    index = FakeIndex(
        tmp_path,
        {
            "app": {"1.0": ["lib", "plugin"]},
            "lib": {"1.0": [], "2.0": []},
            "plugin": {"1.0": ["lib<2"]},
        },
    )
    res = resolve(["app"], {}, Target(), index)
    assert res.versions[canonicalize_name("lib")] == Version("1.0")
    index2 = FakeIndex(
        tmp_path, {"app": {"1.0": ["lib>=2", "plugin"]}, "lib": {"2.0": []}, "plugin": {"1.0": ["lib<2"]}}
    )
    with pytest.raises(ResolveError, match="no wheel of 'lib<2,>=2'"):
        resolve(["app"], {}, Target(), index2)


def test_extras_asked_for_later_are_walked_too(tmp_path: Path) -> None:
    index = FakeIndex(
        tmp_path,
        {
            "app": {"1.0": ["lang", "types"]},
            "types": {"1.0": ["lang[country]"]},
            "lang": {"2.0": ["pycountry; extra == 'country'", "base"]},
            "pycountry": {"26.0": []},
            "base": {"1.0": []},
        },
    )
    res = resolve(["app"], {}, Target(), index)
    assert sorted(res.wheels) == ["app", "base", "lang", "pycountry", "types"]
    assert index.asked.count("lang") == 1  # the wheel is not fetched twice


def test_split_check_join_round_trip_and_damage(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    big = bundle / "big-1.0-py3-none-any.whl"
    data = os.urandom(2_500_000)
    big.write_bytes(data)
    small = fake_wheel(bundle, "small", "1.0")
    entries = [split(big, 1_000_000), split(small, 1_000_000)]
    assert [len(e.parts) for e in entries] == [3, 0] and not big.exists()
    Manifest({"python": "3.12"}, entries).write(bundle)
    m = Manifest.read(bundle)
    assert check_parts(bundle, m) == []
    grouped = groups(bundle, 1_100_000)
    assert sorted(n for g in grouped for n in g) == sorted(p.name for p in bundle.iterdir() if p.is_file())
    assert all(sum((bundle / n).stat().st_size for n in g) <= 1_100_000 for g in grouped)
    wheels = join(bundle, m, bundle / "joined")
    assert (bundle / "joined" / big.name).read_bytes() == data and len(wheels) == 2
    part = bundle / f"{big.name}.part001"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    (bundle / "joined" / big.name).unlink()
    assert check_parts(bundle, m) == [f"{part.name}: checksum mismatch"]
    (bundle / f"{big.name}.part002").unlink()
    assert f"{big.name}.part002: missing" in check_parts(bundle, m)
    with pytest.raises(BundleError):
        Manifest.read(tmp_path)


def test_install_checks_joins_and_installs_without_network(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    w = fake_wheel(bundle, "tinypkg", "1.0")
    Manifest({"python": "3.12"}, [split(w, 200)]).write(bundle)
    target = tmp_path / "site"
    assert main(["check", str(bundle)]) == 0
    assert main(["install", str(bundle), "--target", str(target)]) == 0
    assert (target / "tinypkg" / "__init__.py").is_file()
    next(bundle.glob("*.part000")).unlink()
    shutil.rmtree(bundle / "joined")
    assert main(["install", str(bundle), "--target", str(target)]) == 1
