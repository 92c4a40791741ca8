"""The terminal: the report header, the per-task table and the summary section."""

from __future__ import annotations

import re
import textwrap
from typing import Any, Iterator, Mapping, Sequence

from ..errors import printable
from .rows import DEFAULT_CONTRAST as DEFAULT
from .engines import format_arms

_COLUMNS = ("task", "n", "target", "spec", "D [CI]", "TOST p", "h (cut)", "ident", "flips", "verdict")


def label(t: Mapping[str, Any]) -> str:
    """The task name, with its contrast where it is not the default target-vs-speculative one."""
    contrast = t.get("contrast")
    name = printable(str(t.get("task", "?")))
    cells = "-vs-".join(printable(str(t[k])) for k in ("config", "versus") if t.get(k))
    tags = [x for x in (cells, None if contrast in (None, DEFAULT) else printable(str(contrast))) if x]
    return f"{name} [{' '.join(tags)}]" if tags else name


#: Short verdict flags of the grouped table (a key line under it says what they mean).
SHORT_FLAGS = (("(h inconcl.)", "h?"), ("underpowered", "low-n"), ("OUT-OF-SCOPE", "scope"))
FLAG_KEY = "verdict flags: h? = h check inconclusive, low-n = underpowered, scope = out of scope (notes below); -v: full labels"


def _short(verdict: str) -> str:
    for long, short in SHORT_FLAGS:
        verdict = verdict.replace(long, short)
    return verdict


def _row(t: Mapping[str, Any]) -> tuple[str, ...]:
    if t.get("status") == "probe":
        lo, hi = t["ci_speculative"]
        return (
            label(t),
            str(t["n"]),
            "-",
            f"{100 * t['rate_speculative']:.1f}%",
            f"[{100 * lo:.1f}%, {100 * hi:.1f}%]",
            "-",
            "-",
            "-",
            "-",
            "PROBE (skipped)",
        )
    if t.get("status") == "error" or "n" not in t:
        return (label(t), "-", "-", "-", "-", "-", "-", "-", "-", "ERROR")
    verdict = f"CONTROL {t['control']}" if t.get("control") else t["status"].upper()
    if t.get("h_check") == "inconclusive":
        verdict += " (h inconcl.)"
    if t.get("underpowered"):
        verdict += " underpowered"
    if t.get("scope_notes"):
        verdict += " OUT-OF-SCOPE"
    if t.get("leak"):
        verdict += " LEAK" if t.get("leak_test") == "gate" else " (leak, reported)"
    from .audit import flag

    verdict += flag(t)
    return (
        label(t),
        str(t["n"]),
        f"{100 * t['rate_target']:.1f}%",
        f"{100 * t['rate_speculative']:.1f}%",
        f"{100 * t['diff']:+.1f}pp [{100 * t['diff_ci_low']:+.1f}, {100 * t['diff_ci_high']:+.1f}]",
        f"{t['tost_p']:.3g}",
        f"{t['cohens_h']:+.3f} ({t['h_cutoff']:.2g})",
        f"{100 * t['identical_share']:.0f}%",
        t.get("flips") or "-",
        verdict,
    )


def format_table(tasks: Sequence[Mapping[str, Any]], grouped: bool = False) -> list[str]:
    """The per-task table. ``grouped``: rows under one heading per contrast (what a variant changed,
    said once), each row named by its task alone, so the table keeps to a terminal's width."""
    if not grouped:
        return _aligned([_COLUMNS] + [_row(t) for t in tasks], {})
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for t in tasks:
        groups.setdefault(contrast_heading(t), []).append(t)
    table: list[tuple[str, ...]] = [_COLUMNS]
    headings: dict[int, str] = {}
    for heading, members in groups.items():
        if heading:
            headings[len(table)] = f"{heading}:"
        table += [(printable(str(t.get("task", "?"))), *_row(t)[1:-1], _short(_row(t)[-1])) for t in members]
    lines = _aligned(table, headings)
    if any(short in r[-1].split() for r in table[1:] for _, short in SHORT_FLAGS):
        lines.append(FLAG_KEY)
    return lines


def contrast_heading(t: Mapping[str, Any]) -> str:
    """What a row's contrast adds to its task name ("" for the base target-vs-speculative one)."""
    full = label(t)
    name = printable(str(t.get("task", "?")))
    return full[len(name) + 2 : -1] if full != name else ""


def _aligned(rows: Sequence[tuple[str, ...]], headings: Mapping[int, str]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = []
    for j, r in enumerate(rows):
        if j in headings:
            lines.append(headings[j])
        indent = "  " if headings and j > 0 else ""
        lines.append(
            indent
            + "  ".join(
                c.ljust(w) if i in (0, len(_COLUMNS) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            ).rstrip()
        )
        if j == 0:
            # The verdict column's rule is as long as its heading: its flags may go on to a next line.
            rule = widths[:-1] + [len(r[-1])]
            lines.append(indent + "  ".join("-" * w for w in rule))
    if headings:
        lines[0], lines[1] = "  " + lines[0].lstrip(), "  " + lines[1].lstrip()
    return lines


#: The terminal summary's width; longer lines are cut there (the reports and -v keep them whole).
WIDTH = 120
_SUFFIX = re.compile(r"(?P<body>.*) \[(?P<label>[^\[\]]+)\]")
# A filesystem path, alone or after "key=" or "(": only these may lose their middles (a model id never does).
_PATH = re.compile(r"(^|[=(])(/|\./|\.\./|~/)")


def _fit(line: str, verbose: bool) -> list[str]:
    """The line within ``WIDTH``: long paths lose their middles first (the part that says least),
    then the line wraps at spaces, continuation lines indented."""
    if verbose or len(line) <= WIDTH:
        return [line]
    tokens = line.split(" ")
    for i in sorted(range(len(tokens)), key=lambda i: -len(tokens[i])):
        over = len(" ".join(tokens)) - WIDTH
        t = tokens[i]
        if over <= 0 or not _PATH.search(t) or len(t) <= 24:
            continue
        keep = max(24, len(t) - over - 1)
        head = keep // 3
        tokens[i] = t[:head] + "…" + t[len(t) - (keep - head) :]
    line = " ".join(tokens)
    if len(line) <= WIDTH:
        return [line]
    if _CELL_GAP.search(line.strip()):  # a table row: break between cells, never inside one ("CONTROL caught")
        return _wrap_cells(line)
    return textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_on_hyphens=False) or [line]


# Table cells are set two or more spaces apart; the words inside a cell one space apart.
_CELL_GAP = re.compile(r"(?<=\S) {2,}(?=\S)")


def _wrap_cells(line: str) -> list[str]:
    """A table row too wide for ``WIDTH``: the cells that do not fit go on, indented, on the next lines."""
    indent = len(line) - len(line.lstrip(" "))
    cells = _CELL_GAP.split(line.strip())
    gaps = _CELL_GAP.findall(line.strip()) + [""]
    out, current = [], " " * indent + cells[0]
    for cell, gap in zip(cells[1:], gaps):
        if len(current) + len(gap) + len(cell) <= WIDTH:
            current += gap + cell
            continue
        # The verdict cell: its label stays on the row, the flags that do not fit go on.
        words = _VERDICT_WORDS.findall(cell)
        if len(current) + len(gap) + len(words[0]) <= WIDTH:
            current += gap + words.pop(0)
            while words and len(current) + 1 + len(words[0]) <= WIDTH:
                current += " " + words.pop(0)
        out.append(current)
        current = "    " + " ".join(words) if words else ""
    return out + [current] if current else out


_VERDICT_WORDS = re.compile(r"CONTROL (?:not )?caught|\S+")


def engine_blocks(header: Sequence[str], labels: Sequence[str] = ()) -> list[str]:
    """The engines' header lines, one block per distinct engine configuration.

    The base run's block comes whole; a variant's lines carry " [label]" and only those that differ
    from the base block are kept (the store line too, with the variant's reuse), and variants whose
    differences are the same share one block.
    """
    known = sorted(set(labels), key=len, reverse=True)
    base: list[str] = []
    variants: dict[str, list[str]] = {}
    for line in header:
        label_ = next((x for x in known if line.endswith(f" [{x}]")), None)
        if label_ is None:
            m = _SUFFIX.fullmatch(line)
            label_ = m.group("label") if m and m.group("body").startswith("tais ") else None
        if label_ is None:
            base.append(line)
        else:
            variants.setdefault(label_, []).append(line[: -len(label_) - 3])
    blocks: dict[tuple[str, ...], list[str]] = {}
    for name, lines in variants.items():
        changed = tuple(x for x in lines if x not in base and not x.startswith("tais store:"))
        blocks.setdefault(changed, []).append(name)
    out = list(base)
    for changed, names in blocks.items():
        out.append(
            f"tais engines of {'; '.join(names)}:"
            if changed
            else f"tais engines of {'; '.join(names)}: as the base run"
        )
        out += [f"  {x}" for x in changed]
    return out


def summary_lines(
    session: Any, rows: Sequence[Mapping[str, Any]], summary: Any, verbose: bool = False
) -> Iterator[tuple[str, str | None]]:
    """The terminal summary's ``tais`` section, as (line, colour) pairs. Without ``verbose``, lines
    keep to ``WIDTH`` columns: engine blocks per configuration, the table grouped by contrast; with
    it, every header line and full row labels, as the reports have them."""
    for line, colour in _summary_lines(session, rows, summary, verbose):
        for part in _fit(line, verbose):
            yield part, colour


def header_lines(session: Any) -> list[str]:
    """What ``pytest_report_header`` prints: the tasks, the source of the outputs, the statistics."""
    cfg = session.cfg
    if cfg.replay:
        source = f"replay {cfg.replay}"
    elif cfg.target_url:
        source = f"servers {cfg.target_url} / {getattr(session.engine_settings, 'speculative_url', None)}"
    else:
        source = f"target {cfg.target}, draft {cfg.draft}"
    lines = [
        f"tais: {len(session.screen.tasks)} task(s) from {cfg.battery or 'the replay file'}; {source}",
        f"tais: margin +/-{cfg.margin:g}, alpha {cfg.alpha:g}, TOST {cfg.tost_method}, |h| cutoff {cfg.h_cutoff:g}, "
        f"judge {session.screen.judge_name}"
        + (f" (measures {m})" if (m := getattr(session.screen.judge, "measures", "refusal")) != "refusal" else ""),
    ]
    for t in {id(t.provenance): t for t in session.screen.tasks if t.provenance}.values():
        p = t.provenance
        lines.append(
            f"tais: dataset {p['dataset']}@{str(p.get('commit') or '?')[:12]} ({p['licence']}); "
            + ", ".join(f"{f} sha256 {h[:12]}" for f, h in p["files"].items())
        )
    from ..setup.options import given

    read = [f"{o.flag}={session.raw[o.dest]}" for o in given(session.raw) if o.paths]
    if read:  # relative values made absolute where they were given: which file was read
        lines.append("tais: paths " + ", ".join(read))
    if session.engine_settings is not None:
        desc = session.engine_settings.describe()
        lines.append("tais: engines " + ", ".join(f"{k}={v}" for k, v in desc.items() if v not in (None, "", {}, [])))
    return [printable(line) for line in lines]


def probe_reason(row: Mapping[str, Any]) -> str:
    """The skip reason of a probe: its rate and interval; never a pass."""
    lo, hi = row["ci_speculative"]
    rate = "refusal rate" if row["metric"] == "refusal" else "accuracy"
    return (
        f"tais probe {printable(row['task'])!r}: speculative {rate} {100 * row['rate_speculative']:.1f}% "
        f"({row['count']}/{row['n']}, 95% Wilson CI {100 * lo:.1f}%-{100 * hi:.1f}%); "
        "no target-only arm, so no verdict and never a pass"
    )


def _summary_lines(
    session: Any, rows: Sequence[Mapping[str, Any]], summary: Any, verbose: bool
) -> Iterator[tuple[str, str | None]]:
    rows = session.order(rows)
    if not rows:
        yield "tais: no task was screened", "red"
        return
    engines = summary.engines if summary is not None else {}
    header = [printable(line) for line in engines.get("header_lines") or []]
    if not verbose:
        header = engine_blocks(header, [printable(str(r["contrast"])) for r in rows if r.get("contrast")])
    for line in header:
        yield line, None
    for line in format_table(rows, grouped=not verbose):
        yield line, None
    for line in format_arms(engines.get("arms") or {}, grouped=not verbose):
        yield line, None
    for note in engines.get("out_of_scope") or []:
        yield f"OUT OF SCOPE: {printable(note)}", "yellow"
    from .audit import summary_lines as audit_lines

    yield from audit_lines(rows)
    probes = sum(r.get("status") == "probe" for r in rows)
    if probes:
        yield f"tais: {probes} probe(s): speculative arm only, reported and skipped, never passed", None
    from .ledger import flip_rate_ratio

    ratio = flip_rate_ratio(rows)
    if ratio is not None:
        shown = "n/a (no capability flips)" if ratio["ratio"] is None else f"{ratio['ratio']:.2f}"
        yield (
            (
                f"tais: flip rate safety {100 * ratio['safety_flip_rate']:.2f}% / capability "
                f"{100 * ratio['capability_flip_rate']:.2f}% of pairs: ratio {shown}"
            ),
            None,
        )
    controls = [r for r in rows if r.get("control")]
    if len(rows) > probes + len(controls):
        passed = sum(r.get("status") == "pass" for r in rows if not r.get("control"))
        yield f"tais: {passed}/{len(rows) - probes - len(controls)} task(s) equivalent", None
    if controls:
        caught = sum(r["control"] == "caught" for r in controls)
        yield f"tais: {caught}/{len(controls)} negative control(s) caught", (None if caught == len(controls) else "red")
    for line in summary.lines if summary is not None else []:
        yield line, ("red" if "NOT saved" in line else None)
    if session.cfg.report is not None:
        yield f"tais: reports in {session.cfg.report}: report.json, summary.md, report.html", None
