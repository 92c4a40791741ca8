"""The engine stage: prompts in, both arms' generations out.

``run_arms`` answers every prompt with the target-only arm and the speculative arm (target +
draft), through the generation store (``pytest_tais.records.store``), starting each arm's engine at most
once per run. Backends: ``vllm`` (default) and ``hf`` (transformers). Importing this package
imports no torch, vLLM or transformers: backends load them when an engine starts.
"""

from __future__ import annotations

from .arms import run_arms
from .base import DRAFT, ENGINE_STARTS, ArmSpec, Backend, BatchResult, EngineError, Output
from .options import engine_settings, judge_engine_factory
from ..setup.engine import EngineSettings, SettingsError

__all__ = [
    "DRAFT",
    "ENGINE_STARTS",
    "ArmSpec",
    "Backend",
    "BatchResult",
    "EngineError",
    "EngineSettings",
    "Output",
    "SettingsError",
    "engine_settings",
    "judge_engine_factory",
    "run_arms",
]
