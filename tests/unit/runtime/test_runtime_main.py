"""``python -m infera_runtime`` as a process (synthetic engine): settings, fatal start-up, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infera_runtime.logs import JsonFormatter, configure_logging, register_secret, request_id_var
from infera_runtime.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = int(env.pop("INFERA_PORT", free_port()))
    term = tmp_path / "termination-log"
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INFERA_")},
        "PYTHONPATH": str(REPO / "runtime"),
        "INFERA_MODEL": "/models/tiny",
        "INFERA_ENGINE": "synthetic",
        "INFERA_HOST": "127.0.0.1",
        "INFERA_PORT": str(port),
        "INFERA_TERMINATION_LOG": str(term),
        **env,
    }
    log = open(tmp_path / "runtime.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "infera_runtime"], env=full, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    return proc, port, term


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "runtime exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("runtime not ready in time")


def log_lines(tmp_path: Path) -> list[dict[str, Any]]:
    out = []
    for line in (tmp_path / "runtime.log").read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_fatal_bad_settings_writes_termination_log(tmp_path: Path) -> None:
    proc, _, term = start(tmp_path, INFERA_MAX_INFLIGHT="zero")
    assert proc.wait(30) != 0
    assert "max_inflight" in term.read_text()
    assert term.read_text().count("\n") == 1


def test_fatal_missing_key_file(tmp_path: Path) -> None:
    proc, _, term = start(tmp_path, INFERA_API_KEY_FILE=str(tmp_path / "missing"))
    assert proc.wait(30) == 1
    assert "api_key_file" in term.read_text()


def test_fatal_engine_load_failure(tmp_path: Path) -> None:
    proc, _, term = start(tmp_path, INFERA_ENGINE_ARGS='{"no_such_arg": 1}')
    assert proc.wait(30) == 1
    assert "no_such_arg" in term.read_text()
    assert any(rec["level"] == "critical" for rec in log_lines(tmp_path))


def test_fatal_port_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc, _, term = start(tmp_path, INFERA_PORT=str(s.getsockname()[1]))
        assert proc.wait(30) == 1
    assert "cannot serve" in term.read_text()


def test_config_file_and_sigterm_drain(tmp_path: Path) -> None:
    cfg = tmp_path / "runtime.json"
    cfg.write_text(
        json.dumps(
            {
                "served_model_name": "from-file",
                "engine_args": {"token_latency_s": 0.02},
                "shutdown_grace_s": 20,
                "log_level": "debug",
                "future_field": 1,
            }
        )
    )
    proc, port, _ = start(tmp_path, INFERA_CONFIG_FILE=str(cfg), INFERA_SERVED_MODEL_NAME="from-env")
    try:
        wait_ready(proc, port)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/v1/models").json()["data"][0]["id"] == "from-env"
        events: list[str] = []
        streaming = threading.Event()

        def stream() -> None:
            body = {"model": "from-env", "prompt": "a", "max_tokens": 60, "stream": True}
            with httpx.stream("POST", base + "/v1/completions", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line)
                        streaming.set()

        t = threading.Thread(target=stream)
        t.start()
        assert streaming.wait(10), "the stream never started"  # SIGTERM lands mid-stream (60 x 20 ms)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while httpx.get(base + "/health/ready").status_code != 503:
            assert time.monotonic() < deadline, "readiness still 200 five seconds after SIGTERM"
            time.sleep(0.05)
        r = httpx.post(
            base + "/v1/completions",
            json={"model": "from-env", "prompt": "a"},
            headers={"X-Request-Id": "late-1"},
        )
        assert r.status_code == 503
        t.join(30)
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log_lines(tmp_path)
    assert all({"ts", "level", "logger", "msg"} <= set(rec) for rec in lines)
    late = [rec for rec in lines if rec.get("request_id") == "late-1"]
    assert late and late[0]["status"] == 503 and late[0]["path"] == "/v1/completions"


def test_load_settings_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("INFERA_"):
            monkeypatch.delenv(key)
    cfg = tmp_path / "runtime.json"
    cfg.write_text(json.dumps({"model": "/m/llama-3", "port": 9000, "max_queue": 3, "engine_args": {"x": 1}}))
    monkeypatch.setenv("INFERA_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("INFERA_PORT", "9100")
    s = load_settings()
    assert (s.model, s.port, s.max_queue, s.engine_args) == ("/m/llama-3", 9100, 3, {"x": 1})
    assert s.model_name == "llama-3"
    cfg.write_text("[1]")
    with pytest.raises(SettingsError):
        load_settings()
    cfg.write_text("{nope")
    with pytest.raises(SettingsError):
        load_settings()
    monkeypatch.setenv("INFERA_CONFIG_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(SettingsError):
        load_settings()


def test_json_logs_carry_request_id_and_redact(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    configure_logging("json", "info")
    register_secret("sk-very-secret")
    token = request_id_var.set("rid-42")
    try:
        logging.getLogger("infera.test").info(
            "key sk-very-secret and Authorization: Bearer abc.def", extra={"auth": "sk-very-secret"}
        )
    finally:
        request_id_var.reset(token)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    rec = json.loads(err)
    assert rec["request_id"] == "rid-42"
    assert "sk-very-secret" not in err and "abc.def" not in err
    assert rec["auth"] == "[REDACTED]"
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)
