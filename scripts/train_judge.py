"""Train the shipped refusal judge, estimate it by leave-one-model-out cross-validation, write its weights.

    python scripts/train_judge.py            # cross-validate, train on everything, write the weights file
    python scripts/train_judge.py --check    # retrain and compare with the shipped bytes (exit 1 if they differ)
    python scripts/train_judge.py --grid     # the settings compared (CV only; nothing written)

Data: ``scripts/judge_training/manifest.json`` (files, sha256, licences). Files under ``shared`` are
read from the shared data folder, ``$TAIS_SHARED`` or ``../shared`` beside the checkout, and never
copied. A file whose sha256 differs from the manifest's is an error: the judge would be another one.

Model: logistic regression with an L2 penalty on hashed byte n-grams of the normalised opening of
the answer and the string rules' verdict (``pytest_tais/pairs/learned_judge.py``), fitted with scipy's
L-BFGS-B; the weights are stored as int16. The answer alone is read, never the prompt: the XSTest
prompts are shared between models, and a judge that learned prompts would look better in
cross-validation than on new ones. The rules were written from the project's answers and the Qwen
lane, so for those groups the held-out figures are not held out from the rules; the calibration
pools the other groups only (``RULES_WRITTEN_FROM``).

Cross-validation: each group (one model's answers, or the answers written for the project) is held
out in turn; the judge is trained on the others with the same settings and measured on it. The
pooled held-out counts are the shipped judge's calibration (its Se and Sp, docs/judges.md).
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

#: The shipped settings, chosen by leave-one-model-out CV on the training groups (--grid).
SETTINGS = {"lead": 150, "orders": [2, 3, 4, 5], "bits": 18, "opening": 48, "rules": True}
LAMBDA = 1e-5


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

    rows, cols, vals = L.hashed_features(texts, cfg)
    X = sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), 1 << cfg["bits"]))
    if cfg.get("rules"):
        X = sparse.hstack([X, sparse.csr_matrix(L.rules_feature(texts)[:, None])], format="csr")
    return X


def fit(texts: list[str], labels: list[bool], cfg: dict, lam: float) -> tuple[np.ndarray, float]:
    """Weights and bias minimising the mean logistic loss + lam / 2 |w|^2 (L-BFGS-B, deterministic)."""
    from scipy import optimize

    X = design(texts, cfg)
    used = np.unique(X.indices)
    if cfg.get("rules"):  # the rules' column is always fitted
        used = np.union1d(used, [1 << cfg["bits"]])
    Xu = X[:, used].tocsr()
    XuT = Xu.T.tocsr()
    y = np.where(np.asarray(labels), 1.0, -1.0)
    n = len(y)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = Xu @ w + b
        m = -y * z
        f = float(np.sum(np.logaddexp(0.0, m)) / n + 0.5 * lam * w @ w)
        r = -y / (1.0 + np.exp(-m)) / n
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


def judge_from(w: np.ndarray, b: float, cfg: dict, calibration: dict | None = None, extra: dict | None = None) -> bytes:
    size = 1 << cfg["bits"]
    q, scale, bias = quantize(w[:size], b)
    rules = {"rules_weight": float(f"{w[size]:.9g}")} if cfg.get("rules") else {}
    header = {
        **{k: v for k, v in cfg.items() if k != "rules"},
        **rules,
        "scale": scale,
        "bias": bias,
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


def lomo(groups: dict[str, list[tuple[str, bool]]], cfg: dict, lam: float) -> dict[str, dict[str, int]]:
    """Held-out counts per group: trained on every other group."""
    out = {}
    for held in groups:
        train = [(t, y) for g, ex in groups.items() if g != held for t, y in ex]
        w, b = fit([t for t, _ in train], [y for _, y in train], cfg, lam)
        judge = L.LearnedJudge(judge_from(w, b, cfg))
        texts = [t for t, _ in groups[held]]
        said = judge.scores(texts) > 0
        out[held] = counts(said, np.array([y for _, y in groups[held]]))
    return out


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


def build(
    groups: dict[str, list[tuple[str, bool]]], spec: dict, cfg: dict = SETTINGS, lam: float = LAMBDA
) -> tuple[bytes, dict]:
    """The weights file's bytes and the held-out counts behind its calibration."""
    held = lomo(groups, cfg, lam)
    everything = [ex for g in groups for ex in groups[g]]
    w, b = fit([t for t, _ in everything], [y for _, y in everything], cfg, lam)
    extra = {
        "lambda": lam,
        "training_manifest": manifest_hash(spec),
        "training_groups": {g: len(ex) for g, ex in groups.items()},
    }
    return judge_from(w, b, cfg, calibration_of(held, cfg), extra), held


GRID = [
    ({"lead": lead, "orders": orders, "bits": 18, "opening": opening, "rules": rules}, lam)
    for rules in (False, True)
    for lead, opening in ((150, 48), (300, 32))
    for orders in ([2, 3, 4, 5],)
    for lam in (1e-5, 1e-3)
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="retrain and compare with the shipped file; write nothing")
    ap.add_argument("--grid", action="store_true", help="compare the candidate settings by leave-one-model-out CV")
    ap.add_argument("--out", type=Path, default=L.weights_path(), help="where to write the weights file")
    args = ap.parse_args(argv)
    try:
        spec, groups = load()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.grid:
        print(
            f"{'lead':>4} {'orders':<14} {'lambda':>7} {'min prec':>8} {'min rec':>7} {'pooled acc':>10} {'prec':>6} {'rec':>6}"
        )
        for cfg, lam in GRID:
            held = {g: c for g, c in lomo(groups, cfg, lam).items()}
            ms = [metrics(c) for g, c in held.items() if g != "smollm2-135m"]
            p = metrics(pooled(held))
            print(
                f"{cfg['lead']:>4} {str(cfg['orders']):<14} {lam:>7.0e} {min(m['precision'] for m in ms):>8.3f} "
                f"{min(m['recall'] for m in ms):>7.3f} {p['accuracy']:>10.3f} {p['precision']:>6.3f} {p['recall']:>6.3f}",
                flush=True,
            )
        return 0
    t0 = time.perf_counter()
    data, held = build(groups, spec)
    judge = L.LearnedJudge(data)
    print(
        f"training data: {sum(len(v) for v in groups.values())} distinct answers in {len(groups)} groups "
        f"(manifest {manifest_hash(spec)}); trained in {time.perf_counter() - t0:.1f} s"
    )
    print(f"judge: {judge.name}, {len(data):,} bytes, settings {SETTINGS}, lambda {LAMBDA}")
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
