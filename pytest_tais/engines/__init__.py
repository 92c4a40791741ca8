"""The engine stage: prompts in, both arms' generations out.

``run_arms`` answers every prompt with the target-only arm and the speculative arm (target +
draft), through the generation store (``pytest_tais.store``), starting each arm's engine at most
once per run. Backends: ``vllm`` (default) and ``hf`` (transformers). Importing this package
imports no torch, vLLM or transformers: backends load them when an engine starts.
"""

from __future__ import annotations

from .arms import ArmsResult, run_arms
from .base import DRAFT, ENGINE_STARTS, ArmSpec, Backend, BatchResult, EngineError, Output
from .options import ENGINE_OPTIONS, add_engine_options, engine_settings_from_config, judge_engine_from_config
from .settings import EngineSettings, SettingsError

__all__ = [
    "DRAFT",
    "ENGINE_OPTIONS",
    "ENGINE_STARTS",
    "ArmSpec",
    "ArmsResult",
    "Backend",
    "BatchResult",
    "EngineError",
    "EngineSettings",
    "Output",
    "SettingsError",
    "add_engine_options",
    "engine_settings_from_config",
    "judge_engine_from_config",
    "run_arms",
]

