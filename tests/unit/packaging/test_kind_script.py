"""e2e/kind/run.sh, the kind end-to-end script for users with Docker (not run in CI: no Docker here).

Checked offline: it parses, every file it names exists, its image names are the ones the chart and
the example use, and its control flow is right when run against recording fakes of docker, kind,
kubectl, helm and curl (fakes, so this is a unit test: the real path is covered on the local control
plane by tests/integration/packaging/test_chart_install.py and e2e/).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_support import CHART, REPO

SCRIPT = REPO / "e2e" / "kind" / "run.sh"
TEXT = SCRIPT.read_text()


def test_script_parses_and_is_executable() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert os.access(SCRIPT, os.X_OK)
    assert TEXT.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in TEXT


def test_every_file_it_names_exists() -> None:
    paths = re.findall(r'"\$ROOT/([^"$]+)"', TEXT)
    assert {"charts/infera", "operator/Dockerfile", "runtime/Dockerfile.cpu"} <= set(paths)
    assert "e2e/examples/tiny-cpu-synthetic.yaml" in paths
    for rel in paths:
        assert (REPO / rel).exists(), rel


def test_images_are_the_ones_the_chart_and_the_example_use() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f'OPERATOR_IMAGE="{values["image"]["repository"]}:$TAG"' in TEXT
    example = yaml.safe_load((REPO / "e2e" / "examples" / "tiny-cpu-synthetic.yaml").read_text())
    image = example["spec"]["runtime"]["image"]
    assert image == f"ghcr.io/infera-dev/infera-runtime:{chart['appVersion']}-cpu"
    assert 'RUNTIME_IMAGE="ghcr.io/infera-dev/infera-runtime:$TAG-cpu"' in TEXT
    assert example["metadata"]["name"] == "tiny" and 'ISVC="tiny"' in TEXT
    assert example["spec"]["engine"]["type"] == "synthetic" and example["spec"]["resources"]["gpus"] == 0


# --------------------------------------------------------------------------------- control flow
FAKE = r"""#!/usr/bin/env bash
printf '%s\n' "$(basename "$0") $*" >> "$FAKE_LOG"
tool="$(basename "$0")"
case "$tool $*" in
  "kind get clusters") exit 0 ;;
  *" port-forward "*) exec sleep 30 ;;
  *" wait "*"--for=condition=Ready"*) exit "${FAKE_WAIT_RC:-0}" ;;
  "curl "*"/v1/models") echo '{"object":"list","data":[{"id":"tiny","object":"model"}]}' ;;
  "curl "*"/v1/chat/completions "*) echo '{"id":"c1","object":"chat.completion","choices":[]}' ;;
esac
exit 0
"""


TOOLS = ("docker", "kind", "kubectl", "helm", "curl")


def make_fakes(bindir: Path, tools: tuple[str, ...] = TOOLS) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        exe = bindir / tool
        exe.write_text(FAKE)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def run_script(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bindir = tmp_path / "bin"
    make_fakes(bindir)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env: dict[str, Any] = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )
    return proc, log.read_text().splitlines()


def index(calls: list[str], prefix: str) -> int:
    for i, call in enumerate(calls):
        if call.startswith(prefix):
            return i
    raise AssertionError(f"no call starting with {prefix!r} in:\n" + "\n".join(calls))


def test_full_run_in_order_and_teardown(tmp_path: Path) -> None:
    proc, calls = run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PASSED" in proc.stderr
    order = [
        "kind create cluster --name infera-e2e",
        "docker build -f "
        + str(REPO / "operator" / "Dockerfile")
        + " -t ghcr.io/infera-dev/infera-operator:0.1.0",
        "docker build -f "
        + str(REPO / "runtime" / "Dockerfile.cpu")
        + " -t ghcr.io/infera-dev/infera-runtime:0.1.0-cpu",
        "kind load docker-image --name infera-e2e ghcr.io/infera-dev/infera-operator:0.1.0 "
        "ghcr.io/infera-dev/infera-runtime:0.1.0-cpu",
        f"helm --kube-context kind-infera-e2e install infera {CHART} --namespace infera-system",
        "kubectl --context kind-infera-e2e -n infera-system rollout status deployment/infera-operator",
        "kubectl --context kind-infera-e2e apply -n infera-demo -f "
        + str(REPO / "e2e" / "examples" / "tiny-cpu-synthetic.yaml"),
        "kubectl --context kind-infera-e2e wait -n infera-demo --for=condition=Ready",
        "kubectl --context kind-infera-e2e port-forward -n infera-demo service/tiny 18080:80",
        "curl -fsS http://127.0.0.1:18080/v1/models",
        "curl -fsS http://127.0.0.1:18080/v1/chat/completions",
        "kind delete cluster --name infera-e2e",
    ]
    positions = [index(calls, p) for p in order]
    assert positions == sorted(positions), "\n".join(calls)
    assert not any(" describe " in c for c in calls), "diagnostics only on failure"


def test_failure_shows_diagnostics_and_still_tears_down(tmp_path: Path) -> None:
    proc, calls = run_script(tmp_path, FAKE_WAIT_RC="1")
    assert proc.returncode != 0
    assert "diagnostics" in proc.stderr
    wait = index(calls, "kubectl --context kind-infera-e2e wait -n infera-demo --for=condition=Ready")
    assert index(calls, "kubectl --context kind-infera-e2e describe inferenceservice tiny") > wait
    assert index(calls, "kind delete cluster --name infera-e2e") > wait
    assert not any(c.startswith("curl") and "/v1/" in c for c in calls)


def test_keep_and_no_build(tmp_path: Path) -> None:
    proc, calls = run_script(tmp_path, "--keep", "--no-build", KIND_CLUSTER="mine", LOCAL_PORT="19999")
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("docker build") for c in calls)
    assert not any(c.startswith("kind delete") for c in calls)
    index(calls, "kind load docker-image --name mine")
    index(calls, "curl -fsS http://127.0.0.1:19999/v1/chat/completions")


@pytest.mark.parametrize("missing", ["docker", "kind", "helm"])
def test_missing_tool_fails_before_doing_anything(tmp_path: Path, missing: str) -> None:
    bindir = tmp_path / "bin"
    make_fakes(bindir, tuple(t for t in TOOLS if t != missing))
    log = tmp_path / "calls.log"
    log.write_text("")
    # PATH without the real tools (docker is installed on some machines): only the fakes, plus bash's basics.
    env = {
        "PATH": f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "FAKE_LOG": str(log),
        "HOME": str(tmp_path),
    }
    real = [Path(d) / missing for d in ("/usr/bin", "/bin") if (Path(d) / missing).exists()]
    if real:
        pytest.fail(f"{missing} is installed at {real[0]}: this check needs a PATH without it")
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert proc.returncode == 1
    assert f"{missing} is not on PATH" in proc.stderr
    assert log.read_text() == ""
