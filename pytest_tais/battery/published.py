"""Published benchmarks by name: ``advbench``, ``harmbench``, ``xstest``, ``jbb``, ``strongreject``.

``--tais-battery=xstest`` (or ``xstest@REVISION``, ``?repo=ORG/NAME`` for a mirror) resolves the
benchmark's dataset repository through huggingface_hub, as models resolve (``records/hub.py``:
HF_HUB_OFFLINE, HF_HUB_CACHE / HF_HOME, HF_TOKEN), then hands the file to the kind's own loader,
so a hub copy and a local copy give the same tasks and the same checks. Parquet files (the layout
of the walledai copies) need pyarrow, the ``hub`` extra; CSV files need nothing more.
Every task carries its provenance: dataset id, revision asked, commit resolved, file sha256s, licence.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping

from .base import BatteryError, Task
from ..setup.battery_spec import PUBLISHED_NAMES, Source, check_options
from .table import Row

Table = tuple[list[str], list[Row]]


@dataclasses.dataclass(frozen=True)
class Published:
    repo_id: str
    #: Files read, as hub allow-patterns in order of preference (the first that matches wins).
    patterns: tuple[str, ...]
    licence: str
    #: Parquet rows under the column names the kind's loader reads (files by path -> one table).
    adapt: Callable[[dict[str, Table]], Table] | None = None
    #: True: the loader is given the snapshot folder (it finds its files itself).
    folder: bool = False


def _renamed(table: Table, names: Mapping[str, str]) -> Table:
    header, rows = table
    return [names.get(h, h) for h in header], [(w, {names.get(k, k): v for k, v in r.items()}) for w, r in rows]


def _advbench(tables: dict[str, Table]) -> Table:
    (table,) = tables.values()
    return _renamed(table, {"prompt": "goal"})


def _xstest(tables: dict[str, Table]) -> Table:
    (table,) = tables.values()
    header, rows = table
    if "id" in header:
        return table
    # Copies without the id column keep the published order; its ids are the 1-based row numbers.
    return ["id", *header], [(w, {"id": str(i), **r}) for i, (w, r) in enumerate(rows, 1)]


def _harmbench(tables: dict[str, Table]) -> Table:
    """walledai/HarmBench keeps one folder per functional category (standard/, contextual/, copyright/)
    with columns prompt, category (and context); BehaviorID is not carried, so ids are
    ``<functional>_<row>``."""
    header = ["Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID"]
    rows: list[Row] = []
    for name, (_, table_rows) in sorted(tables.items()):
        functional = Path(name).parts[0] if len(Path(name).parts) > 1 else "standard"
        for i, (where, r) in enumerate(table_rows):
            rows.append(
                (
                    where,
                    {
                        "Behavior": r.get("prompt"),
                        "FunctionalCategory": functional,
                        "SemanticCategory": r.get("category"),
                        "ContextString": r.get("context") or "",
                        "BehaviorID": f"{functional}_{i}",
                    },
                )
            )
    return header, rows


def _strongreject(tables: dict[str, Table]) -> Table:
    (table,) = tables.values()
    return _renamed(table, {"prompt": "forbidden_prompt"})


#: Where each name resolves (docs/batteries.md says why these repositories).
PUBLISHED: dict[str, Published] = {
    "advbench": Published("walledai/AdvBench", ("harmful_behaviors.csv", "data/*.parquet"), "MIT", _advbench),
    "harmbench": Published(
        "walledai/HarmBench",
        ("harmbench_behaviors_text_all.csv", "standard/*.parquet", "contextual/*.parquet"),
        "MIT",
        _harmbench,
    ),
    "xstest": Published("walledai/XSTest", ("xstest_prompts.csv", "data/*.parquet"), "CC-BY-4.0", _xstest),
    "jbb": Published(
        "JailbreakBench/JBB-Behaviors", ("data/harmful-behaviors.csv", "data/benign-behaviors.csv"), "MIT", folder=True
    ),
    "strongreject": Published(
        "walledai/StrongREJECT",
        ("strongreject_dataset.csv", "data/*.parquet"),
        "MIT (prompts drawn from earlier datasets keep their own licences)",
        _strongreject,
    ),
}
assert tuple(PUBLISHED) == PUBLISHED_NAMES


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_parquet(path: Path, where: str, kind: str) -> Table:
    try:
        import pyarrow.parquet as pq  # the `hub` extra: only parquet copies need it
    except ImportError:
        raise BatteryError(
            f"{kind}: {where} is a parquet file, which needs pyarrow; `pip install 'pytest-tais[hub]'` "
            f"(or pyarrow), or pass a CSV copy as {kind}:PATH"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for a damaged file
        raise BatteryError(f"{kind}: {where}: not a readable parquet file ({exc}); fetch it again") from None
    header = list(table.schema.names)
    return header, [(f"{where}: row {i}", r) for i, r in enumerate(table.to_pylist())]


def _files(snapshot: Path, spec: Published) -> list[str]:
    """The snapshot's files the benchmark reads: every CSV pattern's file, or else the parquet ones."""
    present = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    for group in (
        tuple(p for p in spec.patterns if not p.endswith(".parquet")),
        tuple(p for p in spec.patterns if p.endswith(".parquet")),
    ):
        found = [[f for f in present if fnmatch.fnmatch(f, pat)] for pat in group]
        if group and all(found):
            return [f for fs in found for f in fs]
    return []


def load_published(source: Source, loaders: Mapping[str, Callable[[Source], list[Task]]]) -> list[Task]:
    """The named benchmark from its hub dataset repository, loaded by the kind's own loader."""
    from ..records.hub import HubError, fetch_hint, resolve_repo

    kind = source.kind
    assert kind in PUBLISHED
    spec = PUBLISHED[kind]
    repo_id = source.options.get("repo") or spec.repo_id
    options = {k: v for k, v in source.options.items() if k != "repo"}
    if "repo" in source.options:
        check_options(dataclasses.replace(source, options={"repo": source.options["repo"]}), {"repo": None})
    label = f"{repo_id}@{source.revision}" if source.revision else repo_id
    try:
        resolved = resolve_repo(
            repo_id, source.revision, option="dataset", repo_type="dataset", allow_patterns=list(spec.patterns)
        )
    except HubError as exc:
        detail = str(exc).split(": ", 1)[-1].replace("a local dataset folder", f"a local copy as {kind}:PATH")
        raise BatteryError(
            f"--tais-battery={source.text}: dataset {repo_id}, revision {source.revision or 'main'}: {detail}"
        ) from None
    snapshot = resolved.folder
    files = _files(snapshot, spec)
    if not files:
        raise BatteryError(
            f"--tais-battery={source.text}: dataset {label} (commit {resolved.commit or '?'}) holds none of "
            f"{list(spec.patterns)} in the hub cache {snapshot}; fetch them with `{fetch_hint(repo_id, source.revision, 'dataset')}` "
            f"or name another copy with ?repo=ORG/NAME, or pass a local copy as {kind}:PATH"
        )
    short = f"{repo_id}@{(resolved.commit or 'local')[:12]}"
    provenance: dict[str, Any] = {
        "dataset": repo_id,
        "revision": source.revision or "main",
        "commit": resolved.commit,
        "files": {f: sha256_file(snapshot / f) for f in files},
        "licence": spec.licence,
    }
    if spec.folder:
        inner = Source(text=source.text, kind=kind, path=snapshot, options=options)
    elif files[0].endswith(".parquet"):
        tables = {f: read_parquet(snapshot / f, f"{short}:{f}", kind) for f in files}
        assert spec.adapt is not None
        inner = Source(text=source.text, kind=kind, path=snapshot / files[0], options=options, table=spec.adapt(tables))
    else:
        inner = Source(text=source.text, kind=kind, path=snapshot / files[0], options=options)
    return [dataclasses.replace(t, provenance=provenance) for t in loaders[kind](inner)]


def provenance_of(tasks: list[Task]) -> list[dict[str, Any]]:
    """Each published dataset the tasks came from, once, in battery order (for the reports)."""
    out: list[dict[str, Any]] = []
    for t in tasks:
        if t.provenance is not None and dict(t.provenance) not in out:
            out.append(dict(t.provenance))
    return out
