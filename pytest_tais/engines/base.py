"""The one interface every backend implements, and the records it returns.

A backend serves one arm: it starts its engine lazily on the first ``generate`` call (at most
once), generates a batch of prompts greedily (temperature 0), and frees its memory on ``close``.
``fingerprint`` describes everything that decides the outputs, without starting the engine.
Nothing here imports torch, vLLM or transformers.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, Sequence

#: The arm that only feeds the canary control: the draft model alone, greedy.
DRAFT = "draft"
#: The engine that runs a model judge (``--tais-judge=model:...``): one plain model, greedy.
JUDGE = "judge"
#: How the reports name each arm.
ARM_LABELS = {"target": "target-only", "speculative": "speculative", DRAFT: "draft (canary)", JUDGE: "judge"}

#: How a complete answer ends: a stop token, or the max-tokens limit. Anything else (an abort) is an error.
FINISH_REASONS = ("stop", "length")

#: Engine starts in this process, per arm. Tests assert on it; backends increment it.
ENGINE_STARTS: dict[str, int] = {}


class EngineError(RuntimeError):
    """An engine failed, or produced no usable output for a prompt. Never a partial result."""


@dataclasses.dataclass(frozen=True)
class ArmSpec:
    """What one arm runs: a model, and for the speculative arm a draft (or n-gram lookup)."""

    arm: str
    model: Path
    draft: Path | None = None
    method: str | None = None  # None: plain decoding; else a speculative method (settings.SPEC_METHODS)

    @property
    def speculative(self) -> bool:
        return self.method is not None


@dataclasses.dataclass(frozen=True)
class Output:
    """One prompt's answer: decoded text and the generated token ids (stop token included)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


@dataclasses.dataclass
class Progress:
    """One arm's progress bar across chunks: ``desc``, prompts in the arm, prompts done before."""

    desc: str
    total: int
    done: int = 0
    last_chunk: bool = True

    def bar(self) -> Any:
        """A tqdm bar on a terminal; elsewhere (CI logs) one line at each quarter of the arm."""
        import sys

        from tqdm import tqdm

        if not _isatty(sys.stderr):
            from .progress_lines import line_bar

            return line_bar(total=self.total, initial=self.done, desc=self.desc, out=sys.stderr)
        return tqdm(
            total=self.total,
            initial=self.done,
            desc=self.desc,
            unit="prompt",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=self.last_chunk,
        )


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


@dataclasses.dataclass
class BatchResult:
    outputs: list[Output]
    # seconds, generated_tokens, and for speculative arms the draft counters where known:
    # num_drafts, num_draft_tokens, num_accepted_tokens.
    metrics: dict[str, Any]


class Backend(abc.ABC):
    """One arm's engine."""

    name: str = ""

    def __init__(self, settings: Any, spec: ArmSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.started = False
        self.startup_seconds: float | None = None
        # Where the engine's own output goes (set per start by the arms stage; default: the terminal).
        from .enginelog import EngineLog

        self.log = EngineLog(None)

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides this arm's outputs (no engine start)."""

    @abc.abstractmethod
    def generate(self, texts: Sequence[str], *, progress: Progress | None = None) -> BatchResult:
        """Greedy answers to ``texts`` (user messages), in order; a progress bar on stderr if asked."""

    def generate_sampled(
        self, texts: Sequence[str], seeds: Sequence[int], *, progress: Progress | None = None
    ) -> BatchResult:
        """Sampled screens: one answer per (text, seed), at the settings' temperature, top-p and top-k."""
        raise EngineError(f"the {self.name} backend has no sampled screen; use --tais-backend=vllm or hf")

    def prompts_per_call(self) -> int:
        """Prompts per ``generate`` call; the outputs are stored after each, so a rerun resumes."""
        return self.settings.chunk_size

    def plan(self, texts: Sequence[str]) -> None:
        """Told, before the engine starts, every prompt this engine will answer (vLLM sizes its context by them)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the engine (idempotent)."""

    def _count_start(self) -> None:
        ENGINE_STARTS[self.spec.arm] = ENGINE_STARTS.get(self.spec.arm, 0) + 1
        self.started = True

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_outputs(arm: str, texts: Sequence[str], outputs: Sequence[Output]) -> None:
    """Fail closed: one output per prompt, each with at least one generated token."""
    if len(outputs) != len(texts):
        raise EngineError(f"{arm} arm: the engine returned {len(outputs)} outputs for {len(texts)} prompts")
    for text, out in zip(texts, outputs):
        if out.finish_reason not in FINISH_REASONS:
            raise EngineError(
                f"{arm} arm: the engine ended the prompt {text[:80]!r} with finish reason {out.finish_reason!r}, "
                "not a stop token or the token limit; see the engine's log above"
            )
        if not isinstance(out.text, str) or not out.token_ids:
            raise EngineError(
                f"{arm} arm: no output for the prompt {text[:80]!r}; check --tais-max-tokens and "
                "--tais-max-model-len (the prompt may not fit)"
            )
