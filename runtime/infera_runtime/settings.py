"""Runtime settings: environment variables ``INFERA_<FIELD>`` over an optional JSON file.

The operator mounts ConfigMap ``<name>-config`` (key ``runtime.json``) at
``/etc/infera/runtime.json`` and points ``INFERA_CONFIG_FILE`` at it. Keys in the file are the
snake_case field names; environment variables override the file. Unknown keys in the file are
ignored with a warning (so a newer operator can add fields without breaking an older runtime).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_FILE_ENV = "INFERA_CONFIG_FILE"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(Exception):
    """The configuration is invalid (fatal at start-up)."""


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFERA_", extra="ignore", case_sensitive=False, validate_default=True
    )

    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    model: str = Field(min_length=1, description="model directory or Hugging Face id")
    served_model_name: str | None = Field(default=None, description="default: last path component of model")
    engine: Literal["vllm", "synthetic"] = "vllm"
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    quantization: str | None = None
    enforce_eager: bool = False
    tool_call_parser: str | None = Field(default=None, description="vLLM --tool-call-parser")
    enable_auto_tool_choice: bool = Field(default=False, description="vLLM --enable-auto-tool-choice")
    reasoning_parser: str | None = Field(default=None, description="vLLM --reasoning-parser")
    chat_template: str | None = Field(
        default=None, description="vLLM --chat-template: a file or the template"
    )
    structured_outputs_backend: str | None = Field(
        default=None, description="vLLM --structured-outputs-config backend (auto, xgrammar, guidance, ...)"
    )
    max_num_seqs: int | None = Field(default=None, ge=1, description="vLLM --max-num-seqs")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1, description="vLLM --max-num-batched-tokens"
    )
    serve_args: list[str] = Field(
        default_factory=list, description="more `vllm serve` arguments, passed as is"
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments by field name"
    )
    max_inflight: int = Field(default=256, ge=1)
    max_queue: int = Field(default=512, ge=0)
    request_timeout_s: float = Field(default=600.0, gt=0.0)
    max_body_bytes: int = Field(default=16 * 2**20, ge=1024, description="larger bodies get 413")
    body_read_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        description="a body not fully received by then gets 408 (at most request_timeout_s)",
    )
    api_key_file: Path | None = None
    shutdown_grace_s: float = Field(default=30.0, ge=0.0)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "info"
    termination_log: Path = Path("/dev/termination-log")

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level == "warn":
            level = "warning"
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator(
        "served_model_name",
        "quantization",
        "api_key_file",
        "tool_call_parser",
        "reasoning_parser",
        "chat_template",
        "structured_outputs_backend",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _default_served_name(self) -> RuntimeSettings:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser")
        if not self.served_model_name:
            name = PurePosixPath(self.model.rstrip("/")).name
            self.served_model_name = name or self.model
        return self

    @property
    def model_name(self) -> str:
        """The name clients use in ``model`` (``served_model_name``, defaulted)."""
        assert self.served_model_name is not None
        return self.served_model_name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(JsonConfigSettingsSource(settings_cls, json_file=Path(config_file)))
        return tuple(sources)


def unknown_file_keys(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        return []
    return sorted(set(data) - set(RuntimeSettings.model_fields))


def load_settings(**overrides: Any) -> RuntimeSettings:
    """Read settings from the environment and ``$INFERA_CONFIG_FILE``; raise SettingsError."""
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{CONFIG_FILE_ENV}={config_file}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{CONFIG_FILE_ENV}={config_file}: must hold a JSON object")
    try:
        return RuntimeSettings(**overrides)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise SettingsError(f"invalid settings: {_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            parts.append(f"{loc}: {err.get('msg')}")
        return "; ".join(parts)
    return " ".join(str(exc).split())
