"""Every PromQL query the operator sends parses with Prometheus's grammar (promql-parser), and the
Prometheus source reads the answer shape Prometheus gives for them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from infera_operator.collector import PodTarget, PrometheusSource
from infera_testenv import tools


@pytest.fixture(scope="module")
def promql() -> Any:
    return tools.promql_parser()


class Recording(PrometheusSource):
    """The real source with the HTTP call replaced by a record of the queries (and a fixed answer)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(url="http://prometheus.invalid", **kw)
        self.queries: list[str] = []

    async def _query(self, promql: str) -> list[tuple[Mapping[str, str], float]]:
        self.queries.append(promql)
        pod = self.pod_label
        if "_bucket" in promql:
            return [({pod: "a", "le": "0.1"}, 2.0), ({pod: "a", "le": "+Inf"}, 3.0)]
        return [({pod: "a"}, 5.0)]


@pytest.mark.parametrize(
    "labels", [{}, {"namespace_label": "kubernetes_namespace", "pod_label": "kubernetes_pod_name"}]
)
async def test_every_query_parses(promql: Any, labels: dict[str, str]) -> None:
    src = Recording(**labels)
    pods = [PodTarget("a", "10.0.0.1"), PodTarget("b-1", "10.0.0.2")]
    rates = await src.rates("team/chat", pods)
    assert len(src.queries) == 5
    for q in src.queries:
        promql.parse(q)  # raises ValueError where Prometheus answers "parse error"
    assert rates["a"].generation_tokens_per_s == 5.0
    assert rates["a"].ttft_increase == ((0.1, 2.0), (float("inf"), 3.0))


def test_the_parser_rejects_what_prometheus_rejects(promql: Any) -> None:
    with pytest.raises(ValueError):
        promql.parse('sum by (pod) (le) (increase(x_bucket{a="1"}[60s]))')  # the query sent before
    promql.parse('sum by (pod, le) (increase(x_bucket{a="1"}[60s]))')
