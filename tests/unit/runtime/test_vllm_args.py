"""The runtime's settings as ``vllm serve`` arguments, parsed by vLLM's own parser (no engine started)."""

from __future__ import annotations

import pytest

from infera_runtime import vllm_compat
from infera_runtime.engine.vllm_engine import build_serve_args, serve_argv
from infera_runtime.settings import RuntimeSettings


def settings(**kw: object) -> RuntimeSettings:
    return RuntimeSettings(model="/models/tiny", served_model_name="tiny", **kw)  # type: ignore[arg-type]


def test_settings_become_vllm_serve_arguments() -> None:
    s = settings(
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
        reasoning_parser="deepseek_r1",
        chat_template="{{ messages[0].content }}",
        structured_outputs_backend="guidance",
        max_num_seqs=16,
        max_num_batched_tokens=2048,
        serve_args=["--seed", "7"],
        engine_args={"enable_prefix_caching": False},
    )
    args = build_serve_args(s)
    assert args.model == "/models/tiny" and args.served_model_name == ["tiny"]
    assert args.dtype == "float32" and args.max_model_len == 512 and args.enforce_eager
    assert args.tool_call_parser == "hermes" and args.enable_auto_tool_choice
    assert args.reasoning_parser == "deepseek_r1"
    assert args.chat_template == "{{ messages[0].content }}"
    assert args.structured_outputs_config.backend == "guidance"
    assert args.max_num_seqs == 16 and args.max_num_batched_tokens == 2048
    assert args.seed == 7 and args.enable_prefix_caching is False
    assert serve_argv(s)[-2:] == ["--seed", "7"]  # serve_args come last, so they win


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"engine_args": {"no_such_field": 1}}, "no_such_field"),
        ({"serve_args": ["--no-such-flag"]}, "invalid vLLM serve arguments"),
        ({"tool_call_parser": "no_such_parser", "enable_auto_tool_choice": True}, "no_such_parser"),
    ],
)
def test_bad_engine_settings_fail_fast(kw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build_serve_args(settings(**kw))


def test_auto_tool_choice_needs_a_parser() -> None:
    with pytest.raises(ValueError, match="enable_auto_tool_choice needs tool_call_parser"):
        settings(enable_auto_tool_choice=True)


def test_installed_vllm_is_a_supported_release() -> None:
    lo, hi = vllm_compat.SUPPORTED
    assert lo <= vllm_compat.version_tuple() <= hi, vllm_compat.version()
