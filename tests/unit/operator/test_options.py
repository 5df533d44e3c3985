"""Flags and INFERA_* environment of `python -m infera_operator`."""

from __future__ import annotations

import pytest

from infera_operator.options import OperatorOptions, OptionsError, parse_args


def test_defaults() -> None:
    o = OperatorOptions.from_env({})
    assert (o.metrics_interval_s, o.metrics_window_s, o.status_min_interval_s) == (15.0, 60.0, 10.0)
    assert o.prometheus_url is None and o.clusterwide


def test_the_e2e_harness_command_line() -> None:
    env = {
        "INFERA_METRICS_INTERVAL_SECONDS": "3",
        "INFERA_METRICS_WINDOW_SECONDS": "20",
        "INFERA_STATUS_MIN_INTERVAL_SECONDS": "3",
    }
    o = parse_args(["--all-namespaces", "--standalone"], env)
    assert o.all_namespaces and o.standalone and o.clusterwide
    assert (o.metrics_interval_s, o.metrics_window_s, o.status_min_interval_s) == (3.0, 20.0, 3.0)


def test_the_chart_command_line() -> None:
    o = parse_args(
        ["--standalone", "--namespace=a", "--namespace=b", "--liveness=http://0.0.0.0:8080/healthz",
         "--prometheus-url=http://prom:9090"],
        {"INFERA_LOG_FORMAT": "text", "INFERA_LOG_LEVEL": "debug"},
    )  # fmt: skip
    assert o.namespaces == ("a", "b") and not o.clusterwide
    assert o.liveness == "http://0.0.0.0:8080/healthz"
    assert o.prometheus_url == "http://prom:9090"
    assert (o.log_format, o.log_level) == ("text", "debug")


def test_flags_win_over_the_environment() -> None:
    o = parse_args(
        ["--prometheus-url=http://a"], {"INFERA_PROMETHEUS_URL": "http://b", "INFERA_RUNTIME_IMAGE": "img:1"}
    )
    assert o.prometheus_url == "http://a" and o.runtime_image == "img:1"


def test_namespace_and_all_namespaces_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        parse_args(["-A", "-n", "x"], {})


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"INFERA_METRICS_INTERVAL_SECONDS": "soon"}, "not a number"),
        ({"INFERA_METRICS_WINDOW_SECONDS": "0"}, "greater than 0"),
        ({"INFERA_LOG_FORMAT": "xml"}, "json, text"),
    ],
)
def test_bad_environment_is_refused(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(OptionsError, match=fragment):
        OperatorOptions.from_env(env)
