"""A fast in-process engine that makes up text: ``engine="synthetic"``.

It needs no model files and no accelerator, and emits tokens as fast as it is asked to, so it
measures the HTTP/serving ceiling of the runtime and drives the unit tests. It behaves like an
engine where the API can tell: a chat template, a tokenizer (one token per whitespace-prefixed
word), greedy decoding is deterministic for a prompt (temperature 0), a seed makes sampling
reproducible, stop strings are honoured (and never leak into the output while streaming),
``max_tokens`` ends a choice with ``length``, aborts end it with ``abort``.

Tuning (``engine_args`` in the runtime settings):

``token_latency_s`` (0)  sleep between decode steps (0: only yield to the event loop)
``ttft_s`` (0)            sleep before the first token
``max_model_len``        context length (default: the ``max_model_len`` setting, else 4096)
``vocab_size`` (32000)
``eos_after`` (none)      end each choice with ``stop`` after this many tokens unless ignore_eos
``kv_cache_tokens`` (262144)  capacity used to report a simulated KV-cache usage
"""

from __future__ import annotations

import asyncio
import random
import re
import zlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ContextLengthExceededError, InvalidRequestError
from .base import ChatMessages, ChoiceDelta, Engine, EngineOutput, EngineRequest, EngineStats

_WORDS = (
    "the model serves tokens to clients over an api while the engine batches requests and "
    "manages its cache kubernetes schedules pods on nodes with accelerators an operator "
    "reconciles resources into deployments services and autoscalers hello world clouds rivers "
    "mountains sea one two three four five six seven eight nine ten latency throughput answer"
).split()
_TOKEN = re.compile(r"\s*\S+|\s+")
BOS_ID = 1
_FIRST_ID = 16


@dataclass(frozen=True)
class SyntheticConfig:
    token_latency_s: float = 0.0
    ttft_s: float = 0.0
    max_model_len: int = 4096
    vocab_size: int = 32000
    eos_after: int | None = None
    kv_cache_tokens: int = 262144

    @classmethod
    def from_args(cls, args: Mapping[str, Any], max_model_len: int | None = None) -> SyntheticConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown engine_args for the synthetic engine: {', '.join(unknown)}")
        values = dict(args)
        if max_model_len is not None and "max_model_len" not in values:
            values["max_model_len"] = max_model_len
        cfg = cls(**values)
        if cfg.token_latency_s < 0 or cfg.ttft_s < 0 or cfg.max_model_len < 2 or cfg.vocab_size <= _FIRST_ID:
            raise ValueError("synthetic engine_args out of range")
        return cfg


class _Choice:
    __slots__ = ("acc", "finish", "index", "rng", "sent", "tokens")

    def __init__(self, index: int, rng: random.Random) -> None:
        self.index = index
        self.rng = rng
        self.acc = ""
        self.sent = 0
        self.tokens = 0
        self.finish: str | None = None


class SyntheticEngine(Engine):
    name = "synthetic"

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()
        self._started = False
        self._dead = False
        self._running: dict[str, int] = {}  # request id -> tokens held (prompt + generated)
        self._aborted: set[str] = set()

    async def start(self) -> None:
        self._started = True

    async def shutdown(self) -> None:
        for rid in list(self._running):
            self._aborted.add(rid)
        self._started = False

    def is_healthy(self) -> bool:
        return not self._dead

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    async def apply_chat_template(self, messages: ChatMessages) -> str:
        parts = ["<s>"]
        for message in messages:
            parts.append(f"<|{message['role']}|>\n{message['content']}<|end|>\n")
        parts.append("<|assistant|>\n")
        return "".join(parts)

    async def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]:
        span = self.config.vocab_size - _FIRST_ID
        ids = [_FIRST_ID + zlib.crc32(tok.encode()) % span for tok in _TOKEN.findall(text)]
        return [BOS_ID, *ids] if add_special_tokens else ids

    def stats(self) -> EngineStats:
        held = sum(self._running.values())
        return EngineStats(
            kv_cache_usage=min(1.0, held / self.config.kv_cache_tokens),
            running=len(self._running),
            waiting=0,
        )

    async def abort(self, request_id: str) -> None:
        if request_id in self._running:
            self._aborted.add(request_id)

    def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        prompt_len = len(request.prompt_token_ids)
        if prompt_len == 0:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        if prompt_len + request.sampling.max_tokens > self.max_model_len:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt has "
                f"{prompt_len} tokens and max_tokens is {request.sampling.max_tokens}."
            )
        if request.request_id in self._running:
            raise InvalidRequestError(f"duplicate request id {request.request_id}")
        self._running[request.request_id] = prompt_len
        return self._stream(request)

    def _rng(self, request: EngineRequest, index: int) -> random.Random:
        s = request.sampling
        prompt_key = zlib.crc32(repr(request.prompt_token_ids).encode())
        if s.temperature == 0:
            return random.Random(prompt_key)  # greedy: the same text for every choice
        if s.seed is not None:
            return random.Random(f"{prompt_key}:{s.seed}:{index}")
        return random.Random()

    async def _stream(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        rid = request.request_id
        s = request.sampling
        choices = [_Choice(i, self._rng(request, i)) for i in range(s.n)]
        max_stop = max((len(x) for x in s.stop), default=0)
        try:
            if self.config.ttft_s > 0:
                await asyncio.sleep(self.config.ttft_s)
            while True:
                if rid in self._aborted:
                    yield self._abort_output(choices)
                    return
                deltas = []
                for ch in choices:
                    if ch.finish is None:
                        deltas.append(self._step(ch, s.max_tokens, s.stop, max_stop, s.ignore_eos))
                self._running[rid] = len(request.prompt_token_ids) + sum(c.tokens for c in choices)
                done = all(c.finish is not None for c in choices)
                yield EngineOutput(choices=deltas, finished=done)
                if done:
                    return
                await asyncio.sleep(self.config.token_latency_s)
        finally:
            self._running.pop(rid, None)
            self._aborted.discard(rid)

    def _step(
        self, ch: _Choice, max_tokens: int, stop: tuple[str, ...], max_stop: int, ignore_eos: bool
    ) -> ChoiceDelta:
        ch.tokens += 1
        word = ch.rng.choice(_WORDS)
        ch.acc += word if not ch.acc else " " + word
        eos = self.config.eos_after is not None and not ignore_eos and ch.tokens >= self.config.eos_after
        if stop:
            start = max(0, ch.sent - max_stop)
            hits = [i for i in (ch.acc.find(x, start) for x in stop) if i >= 0]
            if hits:
                end = min(hits)
                text = ch.acc[ch.sent : end]
                ch.sent = end
                ch.finish = "stop"
                return ChoiceDelta(ch.index, text, 1, "stop")
        if eos or ch.tokens >= max_tokens:
            ch.finish = "stop" if eos else "length"
            text = ch.acc[ch.sent :]
            ch.sent = len(ch.acc)
            return ChoiceDelta(ch.index, text, 1, "stop" if eos else "length")
        # Hold back a tail that could still become a stop string.
        safe = len(ch.acc) - (max_stop - 1 if max_stop else 0)
        text = ch.acc[ch.sent : safe] if safe > ch.sent else ""
        ch.sent = max(ch.sent, safe)
        return ChoiceDelta(ch.index, text, 1, None)

    @staticmethod
    def _abort_output(choices: list[_Choice]) -> EngineOutput:
        deltas = [ChoiceDelta(c.index, "", 0, "abort") for c in choices if c.finish is None]
        for c in choices:
            c.finish = c.finish or "abort"
        return EngineOutput(choices=deltas, finished=True)
