"""The backend interface the HTTP layer talks to, and the engine interface of the synthetic backend.

A :class:`Backend` serves the OpenAI API as an ASGI app and owns the engine's lifecycle and
statistics: :class:`~.vllm_engine.VllmBackend` (vLLM's own OpenAI server over ``AsyncLLM``) and
:class:`~infera_runtime.serving.SyntheticBackend` (a small OpenAI subset over :class:`Engine`).

An :class:`Engine` (only :mod:`.synthetic` implements it) turns a tokenized prompt plus sampling options into a stream of per-choice text
deltas; :mod:`.synthetic` is an in-process fake for unit tests, demos and HTTP benchmarks.

Contract of :meth:`Engine.generate`:

* it validates the request *eagerly* and raises :class:`~infera_runtime.errors.InvalidRequestError`
  before returning, so a bad request is answered with a 400 before any response header is sent;
* the returned async iterator yields :class:`EngineOutput` until one has ``finished=True``;
* closing the iterator early (``aclose()``, which the serving layer always does) or aborting the
  request id with :meth:`Engine.abort` stops the request in the engine and frees its KV cache.
  An aborted request ends with ``finish_reason="abort"`` on its unfinished choices.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal

EngineFinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables top-k
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    prompt: str | None = None
    # False: the caller only needs the final result (the engine may skip intermediate outputs).
    stream: bool = True


@dataclass(slots=True)
class ChoiceDelta:
    index: int
    text: str  # new text since the previous delta of this choice
    num_tokens: int  # new tokens since the previous delta of this choice
    finish_reason: EngineFinishReason | None = None


@dataclass(slots=True)
class EngineOutput:
    choices: list[ChoiceDelta]
    finished: bool  # every choice has finished
    # When the engine knows better than the arrival of this output (non-streaming outputs come
    # once, at the end): time.monotonic() of the first and the latest generated token.
    first_token_time: float | None = None
    last_token_time: float | None = None


@dataclass(slots=True)
class EngineStats:
    """The engine's scheduler view, as of its last step (None where unknown)."""

    kv_cache_usage: float | None = None  # 0..1
    running: int | None = None
    waiting: int | None = None
    extra: dict[str, float] = field(default_factory=dict)


ChatMessages = list[dict[str, str]]


class Engine(abc.ABC):
    name: str = "engine"

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; raise on failure (the runtime then exits non-zero)."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the engine (idempotent)."""

    @abc.abstractmethod
    def is_healthy(self) -> bool:
        """False once a started engine has died."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Context length: prompt plus generated tokens."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    def default_sampling(self) -> dict[str, Any]:
        """The model's own sampling defaults (generation_config.json) for fields a request leaves unset.

        Keys are :class:`SamplingOptions` field names (``max_tokens`` included).
        """
        return {}

    @abc.abstractmethod
    async def apply_chat_template(self, messages: ChatMessages) -> str:
        """Render chat messages with the model's own chat template (generation prompt added).

        Raises InvalidRequestError if the template rejects the messages.
        """

    @abc.abstractmethod
    async def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Validate eagerly, then return the stream of outputs (see the module docstring)."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a running request (no-op if unknown or finished)."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...


class Backend(abc.ABC):
    """What serves the OpenAI API: an ASGI app (valid once :meth:`start` returned) over an engine."""

    name: str = "backend"
    app: Any = None

    @abc.abstractmethod
    async def start(self, metrics: Any) -> None:
        """Load the model and build :attr:`app`; feed ``metrics`` (infera_runtime.metrics.Metrics)
        with per-request engine observations from then on. Raise on failure."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the engine (idempotent)."""

    @abc.abstractmethod
    def is_healthy(self) -> bool:
        """False once a started engine has died."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int: ...
