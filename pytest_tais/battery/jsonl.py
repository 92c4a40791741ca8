"""The plain JSONL battery: one ``{"task", "prompt_id", "prompt"}`` object per line.

Optional keys: ``context`` (sent before the prompt), ``expected`` (capability answer; makes the
task an accuracy task unless ``metric`` says otherwise), ``metric`` ("refusal" or "accuracy"), ``meta``.
"""

from __future__ import annotations

from pathlib import Path

from ..records.files import iter_json_lines
from .base import BatteryError, Prompt, Task
from .table import check_task_name


def load_jsonl(path: str | Path) -> list[Task]:
    path = Path(path)
    if not path.is_file():
        raise BatteryError(f"{path}: no such battery file; pass an existing JSONL file to --tais-battery")
    prompts: dict[str, list[Prompt]] = {}
    metrics: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for where, obj in iter_json_lines(path, BatteryError):
        if not isinstance(obj, dict):
            raise BatteryError(f"{where}: expected a JSON object")
        for key in ("task", "prompt_id", "prompt"):
            if key not in obj:
                raise BatteryError(f"{where}: missing key {key!r}; each line needs task, prompt_id and prompt")
        task, pid, text = check_task_name(str(obj["task"]), where, "jsonl"), str(obj["prompt_id"]), obj["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise BatteryError(f"{where}: 'prompt' must be a non-empty string")
        if (task, pid) in seen:
            raise BatteryError(
                f"{where}: duplicate prompt_id {pid!r} in task {task!r}; prompt ids must be unique per task"
            )
        seen.add((task, pid))
        expected = obj.get("expected")
        metric = obj.get("metric") or ("accuracy" if expected is not None else "refusal")
        if task in metrics and metrics[task] != metric:
            raise BatteryError(f"{where}: task {task!r} mixes metrics {metrics[task]!r} and {metric!r}")
        metrics[task] = metric
        prompts.setdefault(task, []).append(
            Prompt(
                task=task,
                prompt_id=pid,
                prompt=text,
                context=obj.get("context"),
                expected=None if expected is None else str(expected),
                meta=obj.get("meta") or {},
            )
        )
    if not prompts:
        raise BatteryError(f"{path}: the battery file holds no prompts")
    return [Task(name=t, prompts=tuple(ps), metric=metrics[t], source=str(path)) for t, ps in prompts.items()]
