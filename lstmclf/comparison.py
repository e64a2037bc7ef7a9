"""Does the LSTM help? The report of a comparison: a table per model over its seeds, McNemar's exact
test between the best CNN-LSTM and the best plain CNN on the same test images, plots, report.md.

Everything here works on plain records (runs, their test predictions), so it is checked on hand-made
ones without Ray; `lstmclf.comparing` runs the experiment that produces them.

Kinds of model: a CNN backbone under the LSTM head is a CNN-LSTM, any backbone under the linear head a
plain CNN, no backbone (the LSTM reads the pixels) an LSTM only. The two contenders are the best of each
of the first two kinds by mean *validation* accuracy over their seeds: the test set only scores them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmclf import space
from lstmclf.config import Config, ModelConfig
from lstmclf.errors import ConfigError
from lstmclf.promotion import discordant, mcnemar_exact

CNN_LSTM, PLAIN_CNN, LSTM_ONLY, OTHER = "CNN-LSTM", "plain CNN", "LSTM only", "other"
MARKERS = {CNN_LSTM: "o", PLAIN_CNN: "s", LSTM_ONLY: "^", OTHER: "D"}  # a model's kind, in the plots
PLOTS = {  # file -> what it shows (the report's captions)
    "val_acc.png": "Validation accuracy per epoch: each model's mean over its seeds, the band from its lowest to "
    "its highest seed.",
    "test_vs_time.png": "Test accuracy against training time (the epochs' training and validation), one point per run.",
    "confusion.png": "Confusion matrix on the test set of the best model's best run (both by validation accuracy).",
}


def kind_of(model: dict[str, Any]) -> str:
    """The kind of a model section (backbone, head)."""
    if model["backbone"] == "none":
        return LSTM_ONLY
    return {"lstm": CNN_LSTM, "linear": PLAIN_CNN}.get(model["head"], OTHER)


def check_variants(cfg: Config) -> dict[str, ModelConfig]:
    """Each variant's whole model section (the config's, changed by the variant's keys); one ConfigError
    line for a variant that is no valid model or the same model as another."""
    models: dict[str, ModelConfig] = {}
    for name, variant in cfg.compare.variants.items():
        try:
            model = cfg.override(space.to_dotted({"model": variant})).model
        except ConfigError as e:
            raise ConfigError(f"compare.variants.{name}: not a valid model ({e})") from None
        same = next((other for other, m in models.items() if m == model), None)
        if same:
            raise ConfigError(f"compare.variants {same} and {name} are the same model")
        models[name] = model
    return models


@dataclass(frozen=True)
class Variant:
    """One model of the comparison."""

    name: str
    kind: str
    settings: dict[str, Any]  # the model keys it sets (compare.variants), as the config resolves them
    params: int  # trainable parameters


@dataclass(frozen=True)
class Run:
    """One trial: a variant trained with one seed, and its best checkpoint (by validation accuracy) on test."""

    trial_id: str
    variant: str
    seed: int
    status: str  # as in the results table: completed, error
    best_val_acc: float
    best_epoch: int
    val_acc: list[float]  # per epoch, from 1
    train_s: float  # the epochs' time (training and validation), start-up excluded
    img_s: float  # training images per second, the median over epochs
    checkpoint: str
    test: dict[str, Any] = field(default_factory=dict)  # acc, precision, recall, f1, loss, confusion; {} if none


@dataclass(frozen=True)
class SeedTest:
    """McNemar's exact test of two models trained with the same seed, on the same test images."""

    seed: int
    acc_a: float
    acc_b: float
    b: int  # images only model a gets right
    c: int  # images only model b gets right
    p_value: float  # two-sided
    verdict: str  # better | worse | no significant difference at alpha (a against b)


@dataclass(frozen=True)
class Verdict:
    """The best CNN-LSTM (a) against the best plain CNN (b)."""

    a: str
    b: str
    alpha: float
    images: int
    seeds: list[SeedTest]
    combined: str  # better | worse | no significant difference at alpha
    reason: str  # the combined verdict in a sentence
    pooled_b: int
    pooled_c: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "cnn_lstm": self.a,
            "plain_cnn": self.b,
            "alpha": self.alpha,
            "images": self.images,
            "per_seed": [s.__dict__ for s in self.seeds],
            "combined": self.combined,
            "reason": self.reason,
            "pooled": {"b": self.pooled_b, "c": self.pooled_c},
        }


def no_difference(alpha: float) -> str:
    return f"no significant difference at α = {alpha:g}"


def seed_test(seed: int, labels: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float) -> SeedTest:
    """McNemar's exact two-sided test of predictions `a` against `b` on the same `labels`."""
    only_a, only_b = discordant(labels, a, b)
    p = mcnemar_exact(only_a, only_b, "two-sided")
    if p <= alpha and only_a != only_b:
        word = "better" if only_a > only_b else "worse"
    else:
        word = no_difference(alpha)
    return SeedTest(seed, float(np.mean(a == labels)), float(np.mean(b == labels)), only_a, only_b, p, word)


def combine(a: str, b: str, tests: list[SeedTest], alpha: float, images: int) -> Verdict:
    """The combined verdict over seeds: "better" (or "worse") only when every seed's test says so.

    The seeds' discordant pairs are not pooled into one test: every seed scores the same test images,
    so an image hard for one model tends to be discordant in every seed, and pooled counts would be
    treated as independent when they are not (a p-value too small). Asking every seed to be significant
    on its own is a valid test at alpha (it can only be stricter than any one seed's test)."""
    pooled_b, pooled_c = sum(t.b for t in tests), sum(t.c for t in tests)
    n = len(tests)
    words = [t.verdict for t in tests]
    if not tests:
        combined, reason = no_difference(alpha), "no seed was trained for both models"
    elif all(w not in ("better", "worse") for w in words):
        combined = no_difference(alpha)
        reason = f"neither is significantly better in {'any of the' if n > 1 else 'the one'} {n} seed{'s' * (n > 1)}"
    elif all(w == words[0] for w in words) and words[0] in ("better", "worse"):
        combined = words[0]
        each = f"each of {n} seeds" if n > 1 else "its one seed"
        reason = f"{a} is {combined} than {b} in {each}, p ≤ {alpha:g}"
    else:
        combined = no_difference(alpha)
        better, worse = words.count("better"), words.count("worse")
        reason = (
            f"{a} is significantly better than {b} in {better} of {n} seeds, worse in {worse}, "
            f"not significantly different in {n - better - worse}; a verdict needs every seed to agree"
        )
    return Verdict(a, b, alpha, images, tests, combined, reason, pooled_b, pooled_c)


def summarize(variants: list[Variant], runs: list[Run]) -> list[dict[str, Any]]:
    """One row per variant, best mean validation accuracy first: test accuracy mean and sample standard
    deviation over its seeds, the other test scores, validation accuracy, parameters, time and speed
    (means over its runs)."""
    rows = []
    for v in variants:
        mine = [r for r in runs if r.variant == v.name and r.status != "error"]
        tested = [r for r in mine if r.test]
        accs = [r.test["acc"] for r in tested]
        rows.append(
            {
                "model": v.name,
                "kind": v.kind,
                "runs": len(mine),
                "test_acc": _mean(accs),
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
                **{k: _mean([r.test[k] for r in tested]) for k in ("precision", "recall", "f1")},
                "val_acc": _mean([r.best_val_acc for r in mine]),
                "params": v.params,
                "train_s": _mean([r.train_s for r in mine]),
                "img_s": _mean([r.img_s for r in mine]),
            }
        )
    return sorted(rows, key=lambda r: -r["val_acc"] if r["val_acc"] == r["val_acc"] else math.inf)


def best_of(rows: list[dict[str, Any]], kind: str) -> str | None:
    """The variant of this kind with the highest mean validation accuracy (rows come best first; the
    sort is stable, so a tie goes to the first in compare.variants' order)."""
    return next((r["model"] for r in rows if r["kind"] == kind and r["val_acc"] == r["val_acc"]), None)


def verdict(
    rows: list[dict[str, Any]], runs: list[Run], predictions: dict[str, np.ndarray], labels: np.ndarray, alpha: float
) -> Verdict | None:
    """The best CNN-LSTM against the best plain CNN, seed by seed; None without one of each."""
    a, b = best_of(rows, CNN_LSTM), best_of(rows, PLAIN_CNN)
    if a is None or b is None:
        return None
    by_seed = {(r.variant, r.seed): r.trial_id for r in runs if r.trial_id in predictions}
    seeds = sorted(s for v, s in by_seed if v == a and (b, s) in by_seed)
    tests = [seed_test(s, labels, predictions[by_seed[a, s]], predictions[by_seed[b, s]], alpha) for s in seeds]
    return combine(a, b, tests, alpha, len(labels))


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


# ---------------------------------------------------------------- text


def _pct(x: float) -> str:
    return f"{x:.2%}" if x == x else "–"


def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if x == x else "–"


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """The per-model table, best mean validation accuracy first."""
    lines = [
        "| model | kind | runs | test acc (mean ± std) | precision | recall | F1 | val acc | params | "
        "train time (s) | img/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        std = f" ± {r['test_acc_std']:.2%}" if r["test_acc_std"] == r["test_acc_std"] else ""
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['runs']} | {_pct(r['test_acc'])}{std} | "
            f"{_num(r['precision'], '.4f')} | {_num(r['recall'], '.4f')} | {_num(r['f1'], '.4f')} | "
            f"{_pct(r['val_acc'])} | {r['params']:,} | "
            f"{_num(r['train_s'], ',.0f')} | {_num(r['img_s'], ',.0f')} |"
        )
    return "\n".join(lines) + "\n"


def verdict_lines(v: Verdict | None) -> list[str]:
    """The verdict in words, then a line per seed."""
    if v is None:
        return ["no verdict: it needs a CNN-LSTM and a plain CNN among the models (a CNN backbone, head lstm / linear)"]
    lines = [
        f"{v.a} (best CNN-LSTM) vs {v.b} (best plain CNN), McNemar's exact test on {v.images:,} test images: "
        f"**{v.combined}**",
        f"  {v.reason}",
    ]
    for t in v.seeds:
        lines.append(
            f"  seed {t.seed}: acc {_pct(t.acc_a)} vs {_pct(t.acc_b)}  b {t.b} (only {v.a} right)  c {t.c} "
            f"(only {v.b} right)  p {t.p_value:.3g}  {t.verdict}"
        )
    return lines


def report_markdown(
    title: str,
    setup: str,
    rows: list[dict[str, Any]],
    variants: list[Variant],
    v: Verdict | None,
    plots: list[str],
) -> str:
    """report.md: the setup, the table, the verdict with its reasoning, the plots (linked relatively)."""
    out = [f"# {title}", "", setup, "", "## Models", "", table_markdown(rows)]
    out += [
        "Test scores are means over the seeds (± the sample standard deviation of test accuracy); precision, "
        "recall and F1 are macro averages; val acc is the mean of each run's best validation accuracy, the "
        "epoch whose checkpoint was tested. Train time is the mean over a model's runs of its epochs' time "
        "(training and validation, not start-up); img/s its training speed.",
        "",
        "| model | kind | settings |",
        "| --- | --- | --- |",
        *(f"| {x.name} | {x.kind} | {', '.join(f'{k}={val}' for k, val in x.settings.items())} |" for x in variants),
        "",
        "## Does the LSTM help?",
        "",
    ]
    if v is None:
        out += [verdict_lines(v)[0], ""]
    else:
        out += [
            f"The best CNN-LSTM, **{v.a}**, against the best plain CNN, **{v.b}** (each the best of its kind by mean "
            f"validation accuracy), on the same {v.images:,} test images: **{v.combined}** ({v.reason}).",
            "",
            f"| seed | {v.a} acc | {v.b} acc | b (only {v.a} right) | c (only {v.b} right) | p (two-sided) | verdict |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            *(
                f"| {t.seed} | {_pct(t.acc_a)} | {_pct(t.acc_b)} | {t.b} | {t.c} | {t.p_value:.3g} | {t.verdict} |"
                for t in v.seeds
            ),
            "",
            "McNemar's exact test looks only at the images the two models disagree on: if they were equally good, "
            "each of the b + c images exactly one of them gets right would be either's with probability 1/2, and "
            "the p-value is the chance of a split at least as uneven as b : c (two-sided binomial). Runs are "
            f"paired by seed. The combined verdict is **better** or **worse** only when every seed's test says so "
            f"at α = {v.alpha:g}, and no significant difference otherwise. The seeds' discordant pairs are not "
            f"pooled into one test (pooled: b {v.pooled_b}, c {v.pooled_c}): every seed scores the same images, "
            "an image one model finds hard tends to count in every seed, and the pooled counts are not the "
            "independent trials the binomial test assumes, which would make the p-value too small.",
            "",
        ]
    out += ["## Plots", ""]
    out += [f"![{name}]({name})\n\n{PLOTS[name]}\n" for name in plots]
    return "\n".join(out)


# ---------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_val_curves(rows: list[dict[str, Any]], runs: list[Run], path: Path) -> None:
    """Validation accuracy per epoch per model: the mean over seeds, a band from the lowest to the highest."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, r in enumerate(rows):
        curves = [x.val_acc for x in runs if x.variant == r["model"] and x.val_acc]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        acc = np.array([c[:n] for c in curves]) * 100  # (seeds, epochs)
        epochs = np.arange(1, n + 1)
        mark = MARKERS[r["kind"]]
        ax.plot(epochs, acc.mean(axis=0), f"{mark}-", color=f"C{i}", ms=4, label=f"{r['model']} ({r['kind']})")
        ax.fill_between(epochs, acc.min(axis=0), acc.max(axis=0), color=f"C{i}", alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_test_vs_time(rows: list[dict[str, Any]], runs: list[Run], path: Path) -> None:
    """Test accuracy against training time, one point per run, a colour per model."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, r in enumerate(rows):  # the same colour per model as in the validation plot
        mine = [x for x in runs if x.variant == r["model"] and x.test]
        if mine:
            times, accs = [x.train_s for x in mine], [x.test["acc"] * 100 for x in mine]
            ax.scatter(times, accs, s=28, color=f"C{i}", marker=MARKERS[r["kind"]], label=r["model"])
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training time per run (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(run: Run, path: Path) -> None:
    """The confusion matrix of one run's test predictions (lstmclf.evaluation draws it)."""
    from lstmclf.evaluation import plot_confusion as draw

    draw(run.test, path)
