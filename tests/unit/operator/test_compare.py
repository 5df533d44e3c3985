"""Desired-vs-live comparison with the API server's normalisations."""

from __future__ import annotations

from decimal import Decimal

from infera_operator import compare


def test_quantities_compare_by_amount() -> None:
    assert compare.parse_quantity("1Gi") == Decimal(2**30)
    assert compare.parse_quantity("500m") == Decimal("0.5")
    assert compare.is_subset({"cpu": "1000m"}, {"cpu": "1"})
    assert compare.is_subset({"memory": "1024Mi"}, {"memory": "1Gi"})
    assert compare.is_subset({"gpu": 2}, {"gpu": "2"})
    assert not compare.is_subset({"memory": "1Gi"}, {"memory": "2Gi"})
    assert not compare.is_subset({"flag": True}, {"flag": 1})


def test_server_defaults_do_not_count_as_drift() -> None:
    desired = {"ports": [{"name": "http", "containerPort": 8000}], "volumes": [{"name": "x", "emptyDir": {}}]}
    live = {
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
        "volumes": [{"name": "x", "emptyDir": {}}],
        "dnsPolicy": "ClusterFirst",
    }
    assert compare.is_subset(desired, live)
    assert compare.differences(desired, live) == []


def test_drift_is_found_and_located() -> None:
    desired = {"spec": {"containers": [{"name": "runtime", "image": "a:1"}]}}
    live = {"spec": {"containers": [{"name": "runtime", "image": "b:2"}]}}
    assert not compare.is_subset(desired, live)
    assert compare.differences(desired, live) == [".spec.containers"]
    assert compare.differences({"a": {"b": 1}}, {"a": {}}) == [".a.b"]


def test_named_lists_match_by_name_and_order_and_plain_lists_by_position() -> None:
    desired = [{"name": "a", "v": 1}, {"name": "b", "v": 2}]
    assert compare.is_subset(desired, [{"name": "a", "v": 1}, {"name": "x"}, {"name": "b", "v": 2}])
    assert not compare.is_subset(desired, [{"name": "b", "v": 2}, {"name": "a", "v": 1}])
    assert not compare.is_subset(desired, [{"name": "a", "v": 1}])
    assert compare.is_subset([1, 2], [1, 2]) and not compare.is_subset([1, 2], [1, 2, 3])


def test_empty_desired_values_match_absent_live_ones() -> None:
    assert compare.is_subset({"emptyDir": {}, "args": []}, {})
