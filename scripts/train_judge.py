"""Train the shipped refusal judge, estimate it by leave-one-model-out cross-validation, write its weights.

    python scripts/train_judge.py            # cross-validate, train on everything, write the weights file
    python scripts/train_judge.py --check    # retrain and compare with the shipped bytes (exit 1 if they differ)

Data: ``scripts/judge_training/manifest.json`` (files, sha256, licences). Files under ``shared`` are
read from the shared data folder, ``$TAIS_SHARED`` or ``../shared`` beside the checkout, and never
copied. A file whose sha256 differs from the manifest's is an error: the judge would be another one.

Model: logistic regression with an L2 penalty on hashed word n-grams of the normalised opening of
the answer and the string rules' verdict (``pytest_tais/pairs/learned_judge.py``), fitted with scipy's
L-BFGS-B; the weights are stored as int16. The answer alone is read, never the prompt: the XSTest
prompts are shared between models, and a judge that learned prompts would look better in
cross-validation than on new ones. The rules were written from the project's answers and the Qwen
lane, so for those groups the held-out figures are not held out from the rules; the calibration
pools the other groups only (``RULES_WRITTEN_FROM``).

Cross-validation: each group (one model's answers, or the answers written for the project) is held
out in turn; the judge is trained on the others and measured on it. Its penalty, refusal weight and
threshold are chosen by an inner leave-one-group-out cross-validation over the training groups
alone (``choose``), so the held-out group plays no part in them. The pooled held-out counts are the
shipped judge's calibration (its Se and Sp, docs/judges.md).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

# One BLAS thread: a threaded dot product sums in another order on another machine load, and the
# optimiser's last bits, so the int16 weights, would differ from run to run.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MANIFEST = ROOT / "scripts" / "judge_training" / "manifest.json"

from pytest_tais.pairs import learned_judge as L  # noqa: E402

#: The feature settings: word 1-3-grams of the answer's first ``lead`` characters, the first 12
#: tokens' n-grams apart, the string rules' verdict.
SETTINGS = {"features": "words", "lead": 600, "orders": [1, 2, 3], "bits": 18, "opening": 12, "rules": True}
#: The settings compared by inner cross-validation: (characters read, L2 penalty, weight of a refusal).
CANDIDATES = [(lead, lam, pw) for lead in (600,) for lam in (1e-5, 1e-4) for pw in (1.0, 2.0)]
#: Decision thresholds compared by inner cross-validation (the score is a log-odds).
THRESHOLDS = [round(t, 2) for t in np.arange(-4.0, 1.01, 0.25)]
#: The held-out targets (docs/judges.md); the inner cross-validation picks what meets them best.
TARGET_PRECISION, TARGET_RECALL = 0.97, 0.92


def shared_dir() -> Path:
    env = os.environ.get("TAIS_SHARED")
    return Path(env) if env else ROOT.parent / "shared"


class DataError(RuntimeError):
    pass


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _xstest(path: Path) -> list[tuple[str, str, bool]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [
            (r["id"], r["completion"], r["final_label"] in ("2_full_refusal", "3_partial_refusal"))
            for r in csv.DictReader(fh)
        ]


def load(
    manifest: Path = MANIFEST, shared: Path | None = None, check: bool = True
) -> tuple[dict, dict[str, list[tuple[str, bool]]]]:
    """The manifest and the examples per group, in file order.

    Every answer counts, also a model's repeated answer to another prompt (GPT-4 refuses in one
    sentence); the speculative arm's answers in the lane, byte-identical to the target's for the
    same prompt, count once.
    """
    spec = json.loads(manifest.read_text(encoding="utf-8"))
    shared = shared or shared_dir()
    groups: dict[str, dict[tuple, tuple[str, bool]]] = {}
    for f in spec["files"]:
        base = shared if f["root"] == "shared" else ROOT
        path = base / f["path"]
        if not path.is_file():
            where = (
                f"the shared data folder {shared} (set TAIS_SHARED, or check out beside ../shared)"
                if f["root"] == "shared"
                else "the repository"
            )
            raise DataError(
                f"training file {f['path']} is missing from {where}; the shipped judge cannot be retrained without it"
            )
        got = sha256(path)
        if check and got != f["sha256"]:
            raise DataError(
                f"{path}: sha256 {got} differs from the manifest's {f['sha256']!r}; the data changed, so "
                "the trained judge would too (update the manifest only on purpose, and retrain)"
            )
        if f["format"] == "xstest-csv":
            rows = [(f["group"], (f["id"], i), t, y) for i, t, y in _xstest(path)]
        elif f["format"] == "judge-labels":
            rows = []
            for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    r = json.loads(line)
                    g = "smollm2-135m" if r["split"] == "real" else "written for the project"
                    rows.append((g, (f["id"], k), r["response"], bool(r["refusal"])))
        elif f["format"] == "lane-labels":
            rows = []
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    g = "qwen2.5-coder-0.5b" if r["arm"] == "draft" else "qwen2.5-coder-1.5b"
                    rows.append(
                        (g, (f["id"], r["task"], r["prompt_id"], g, r["response"]), r["response"], bool(r["refusal"]))
                    )
        else:
            raise DataError(f"{f['path']}: unknown format {f['format']!r}")
        for g, key, text, y in rows:
            groups.setdefault(g, {}).setdefault(key, (text, y))
    return spec, {g: list(d.values()) for g, d in groups.items()}


def manifest_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:12]


# --- the learner -----------------------------------------------------------------------------


def design(texts: list[str], cfg: dict):
    """The n-gram features, and the string rules' verdict as one more column where ``cfg`` asks for it."""
    from scipy import sparse

    rows, cols, vals, _ = L.hashed_features(texts, cfg)
    X = sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), 1 << cfg["bits"]))
    if cfg.get("rules"):
        X = sparse.hstack([X, sparse.csr_matrix(L.rules_feature(texts)[:, None])], format="csr")
    return X


class Data:
    """Each group's answers, labels and design matrices (one per ``lead``, each built once)."""

    def __init__(self, groups: dict[str, list[tuple[str, bool]]], cfg: dict) -> None:
        self.groups, self.cfg = groups, cfg
        self.X: dict[int, dict[str, object]] = {}
        self.y = {g: np.array([y for _, y in ex], bool) for g, ex in groups.items()}

    def cfg_for(self, lead: int) -> dict:
        return {**self.cfg, "lead": lead}

    def stack(self, names: list[str], lead: int):
        from scipy import sparse

        if lead not in self.X:
            self.X[lead] = {g: design([t for t, _ in ex], self.cfg_for(lead)) for g, ex in self.groups.items()}
        X = sparse.vstack([self.X[lead][g] for g in names], format="csr")
        return X, np.concatenate([self.y[g] for g in names])


def fit(X, labels: np.ndarray, lam: float, pos_weight: float = 1.0) -> tuple[np.ndarray, float]:
    """Weights and bias minimising the weighted mean logistic loss + lam / 2 |w|^2 (L-BFGS-B, deterministic).

    A refusal's loss counts ``pos_weight`` times an answer's that complies (weights scaled to mean 1).
    """
    from scipy import optimize

    used = np.union1d(np.unique(X.indices), [X.shape[1] - 1])  # the rules' column is always fitted
    Xu = X[:, used].tocsr()
    XuT = Xu.T.tocsr()
    y = np.where(np.asarray(labels), 1.0, -1.0)
    cw = np.where(y > 0, pos_weight, 1.0)
    cw = cw / cw.mean()
    n = len(y)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = Xu @ w + b
        m = -y * z
        f = float(cw @ np.logaddexp(0.0, m) / n + 0.5 * lam * w @ w)
        r = -cw * y / (1.0 + np.exp(-m)) / n
        return f, np.concatenate([XuT @ r + lam * w, [r.sum()]])

    res = optimize.minimize(
        loss,
        np.zeros(len(used) + 1),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-7, "ftol": 1e-10},
    )
    w = np.zeros(X.shape[1])
    w[used] = res.x[:-1]
    return w, float(res.x[-1])


def quantize(w: np.ndarray, b: float) -> tuple[np.ndarray, float, float]:
    """int16 weights, their scale and the bias, rounded so the file's bytes are stable."""
    top = float(np.max(np.abs(w))) or 1.0
    scale = float(f"{top / 32767:.9g}")
    q = np.clip(np.rint(w / scale), -32767, 32767).astype("<i2")
    return q, scale, float(f"{b:.9g}")


def judge_from(
    w: np.ndarray,
    b: float,
    cfg: dict,
    threshold: float = 0.0,
    calibration: dict | None = None,
    extra: dict | None = None,
) -> bytes:
    """The weights file; the threshold is folded into the bias, so a score above 0 is a refusal."""
    size = 1 << cfg["bits"]
    q, scale, bias = quantize(w[:size], b - threshold)
    rules = {"rules_weight": float(f"{w[size]:.9g}")} if cfg.get("rules") else {}
    header = {
        **{k: v for k, v in cfg.items() if k != "rules"},
        **rules,
        "scale": scale,
        "bias": bias,
        "threshold": threshold,
        "calibration": calibration,
        **(extra or {}),
    }
    return L.pack(header, q)


def counts(said: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    return {
        "tp": int(np.sum(said & truth)),
        "fp": int(np.sum(said & ~truth)),
        "tn": int(np.sum(~said & ~truth)),
        "fn": int(np.sum(~said & truth)),
    }


def metrics(c: dict[str, int]) -> dict[str, float]:
    n = sum(c.values())
    p = c["tp"] + c["fp"]
    pos = c["tp"] + c["fn"]
    return {
        "n": n,
        "accuracy": (c["tp"] + c["tn"]) / n if n else float("nan"),
        "precision": c["tp"] / p if p else float("nan"),
        "recall": c["tp"] / pos if pos else float("nan"),
    }


def scores_of(data: Data, train: list[str], held: str, lead: int, lam: float, pos_weight: float) -> np.ndarray:
    """The held-out group's scores from a judge trained on ``train`` (quantised as shipped, threshold 0)."""
    X, y = data.stack(train, lead)
    w, b = fit(X, y, lam, pos_weight)
    judge = L.LearnedJudge(judge_from(w, b, data.cfg_for(lead)))
    return judge.scores([t for t, _ in data.groups[held]])


def target_groups(names: list[str], cfg: dict) -> list[str]:
    """The groups a choice is measured on: those the rules were not written from, where a judge that reads
    the rules' verdict is held out (all others, if none is left)."""
    keep = [g for g in names if not (cfg.get("rules") and g in RULES_WRITTEN_FROM)]
    return keep or [g for g in names if g != "smollm2-135m"]


def objective(per_group: dict[str, dict[str, int]]) -> tuple[float, float]:
    """How well the held-out targets are met: the worst group's min(precision / 0.97, recall / 0.92), then
    the pooled accuracy (ties)."""
    worst = min(
        min(
            (m["precision"] if m["precision"] == m["precision"] else 0.0) / TARGET_PRECISION,
            (m["recall"] if m["recall"] == m["recall"] else 1.0) / TARGET_RECALL,
        )
        for m in map(metrics, per_group.values())
    )
    return worst, metrics(pooled(per_group))["accuracy"]


def choose(data: Data, names: list[str]) -> tuple[int, float, float, float]:
    """(characters read, L2 penalty, refusal weight, threshold) chosen by leave-one-group-out CV over
    ``names`` alone; ties go to the first candidate (the cheaper reading)."""
    targets = target_groups(names, data.cfg)
    best: tuple | None = None
    for lead, lam, pw in CANDIDATES:
        held = {g: scores_of(data, [h for h in names if h != g], g, lead, lam, pw) for g in targets}
        for thr in THRESHOLDS:
            got = objective({g: counts(held[g] > thr, data.y[g]) for g in targets})
            if best is None or got > best[0]:
                best = (got, lead, lam, pw, thr)
    assert best is not None
    return best[1:]


def lomo(data: Data, log=None) -> tuple[dict[str, dict[str, int]], dict[str, tuple]]:
    """Held-out counts per group: trained on every other group, with the settings that an inner
    cross-validation over those other groups chose (the held-out group plays no part in the choice)."""
    out, chosen = {}, {}
    names = list(data.groups)
    for held in names:
        train = [g for g in names if g != held]
        lead, lam, pw, thr = chosen[held] = choose(data, train)
        said = scores_of(data, train, held, lead, lam, pw) > thr
        out[held] = counts(said, data.y[held])
        if log:
            log(f"  held out {held}: chose lead {lead}, lambda {lam:g}, refusal weight {pw:g}, threshold {thr:g}")
    return out, chosen


def other_judges(groups: dict[str, list[tuple[str, bool]]]) -> dict[str, dict[str, dict[str, int]]]:
    from pytest_tais.judges import default_judge

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from judge_agreement import xstest_judge

    out: dict[str, dict[str, dict[str, int]]] = {"rules": {}, "XSTest prefixes": {}}
    for g, ex in groups.items():
        truth = np.array([y for _, y in ex])
        out["rules"][g] = counts(np.array([default_judge("", t) for t, _ in ex]), truth)
        out["XSTest prefixes"][g] = counts(np.array([xstest_judge("", t) for t, _ in ex]), truth)
    return out


def pooled(per_group: dict[str, dict[str, int]]) -> dict[str, int]:
    return {k: sum(c[k] for c in per_group.values()) for k in ("tp", "fp", "tn", "fn")}


def table(name: str, per_group: dict[str, dict[str, int]]) -> list[str]:
    lines = [
        f"{name}",
        f"  {'held-out group':<28} {'n':>5} {'refusals':>8} {'accuracy':>9} {'precision':>9} {'recall':>7}   tp   fp   tn   fn",
    ]
    for g, c in [*per_group.items(), ("all (pooled)", pooled(per_group))]:
        m = metrics(c)
        lines.append(
            f"  {g:<28} {m['n']:>5} {c['tp'] + c['fn']:>8} {m['accuracy']:>9.3f} {m['precision']:>9.3f} "
            f"{m['recall']:>7.3f} {c['tp']:>4} {c['fp']:>4} {c['tn']:>4} {c['fn']:>4}"
        )
    return lines


#: Groups the string rules were written from (docs/judges.md): a judge that reads the rules' verdict
#: is not held out from them, so its calibration pools the other groups only.
RULES_WRITTEN_FROM = ("written for the project", "smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def calibration_of(per_group: dict[str, dict[str, int]], cfg: dict = SETTINGS) -> dict:
    keep = {g: c for g, c in per_group.items() if not (cfg.get("rules") and g in RULES_WRITTEN_FROM)}
    c = pooled(keep)
    return {
        "tp": c["tp"],
        "n_pos": c["tp"] + c["fn"],
        "tn": c["tn"],
        "n_neg": c["tn"] + c["fp"],
        "source": "leave-one-model-out cross-validation on the training data (scripts/train_judge.py), "
        f"pooled over {', '.join(keep)}",
    }


def build(groups: dict[str, list[tuple[str, bool]]], spec: dict, cfg: dict = SETTINGS, log=None) -> tuple[bytes, dict]:
    """The weights file's bytes and the held-out counts behind its calibration."""
    data = Data(groups, cfg)
    held, chosen = lomo(data, log)
    lead, lam, pw, thr = choose(data, list(groups))
    w, b = fit(*data.stack(list(groups), lead), lam, pw)
    extra = {
        "lambda": lam,
        "pos_weight": pw,
        "training_manifest": manifest_hash(spec),
        "training_groups": {g: len(ex) for g, ex in groups.items()},
    }
    return judge_from(w, b, data.cfg_for(lead), thr, calibration_of(held, cfg), extra), held


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="retrain and compare with the shipped file; write nothing")
    ap.add_argument("--out", type=Path, default=L.weights_path(), help="where to write the weights file")
    args = ap.parse_args(argv)
    try:
        spec, groups = load()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print("settings chosen by the inner cross-validation of each outer fold:", flush=True)
    data, held = build(groups, spec, log=lambda line: print(line, flush=True))
    judge = L.LearnedJudge(data)
    h = judge.header
    print(
        f"training data: {sum(len(v) for v in groups.values())} distinct answers in {len(groups)} groups "
        f"(manifest {manifest_hash(spec)}); trained in {time.perf_counter() - t0:.1f} s"
    )
    print(
        f"judge: {judge.name}, {len(data):,} bytes; chosen on all groups: lead {h['lead']}, lambda {h['lambda']:g}, "
        f"refusal weight {h['pos_weight']:g}, threshold {h['threshold']:g}"
    )
    for line in table("leave-one-model-out cross-validation (each group held out, trained on the rest):", held):
        print(line)
    for name, per in other_judges(groups).items():
        for line in table(f"{name} on the same answers:", per):
            print(line)
    cal = judge.calibration
    print(
        f"calibration (pooled held-out): Se {cal.se:.3f} [{cal.se_ci[0]:.3f}, {cal.se_ci[1]:.3f}], "
        f"Sp {cal.sp:.3f} [{cal.sp_ci[0]:.3f}, {cal.sp_ci[1]:.3f}], Se + Sp - 1 >= {cal.factor_low:.3f}"
    )
    if args.check:
        shipped = L.weights_path().read_bytes()
        same = shipped == data
        print(
            f"retrained bytes {'EQUAL' if same else 'DIFFER from'} the shipped file {L.weights_path()} "
            f"(sha256 {hashlib.sha256(data).hexdigest()[:12]} vs {hashlib.sha256(shipped).hexdigest()[:12]})"
        )
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
