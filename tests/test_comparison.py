"""The comparison's report on hand-made runs and predictions, without Ray: McNemar's two-sided exact
p-value against the binomial summed by hand, the verdict's words, seed by seed and combined, the
contenders chosen by validation accuracy, the table, report.md and the plots."""

import math

import pytest
from support.helpers import ray_started, run_job
from test_promotion import binomial_tail, pairs

from lstmclf import comparison
from lstmclf.comparison import CNN_LSTM, LSTM_ONLY, PLAIN_CNN, Run, Variant
from lstmclf.config import PRESET_VARIANTS, Config, load_config
from lstmclf.errors import ConfigError


def two_sided(b: int, c: int) -> float:
    """The exact two-sided binomial p-value of b successes in b + c trials at 1/2, summed by hand."""
    return 1.0 if b + c == 0 else min(1.0, 2 * binomial_tail(max(b, c), b + c))


@pytest.mark.parametrize(
    ("b", "c", "word"),
    [
        (30, 5, "better"),
        (5, 30, "worse"),
        (10, 8, "no significant difference at α = 0.05"),
        (12, 12, "no significant difference at α = 0.05"),
        (6, 0, "better"),  # p = 2 / 64 = 0.031
        (5, 0, "no significant difference at α = 0.05"),  # p = 2 / 32 = 0.0625
        (0, 0, "no significant difference at α = 0.05"),
    ],
)
def test_seed_test_is_mcnemars_exact_two_sided_binomial(b, c, word):
    labels, a, other = pairs(both=900, only_new=b, only_old=c, neither=37)
    t = comparison.seed_test(4, labels, a, other, alpha=0.05)
    assert (t.seed, t.b, t.c) == (4, b, c)
    assert 0.0 <= t.p_value <= 1.0
    assert t.p_value == pytest.approx(two_sided(b, c), rel=1e-9, abs=1e-15)
    assert t.acc_a - t.acc_b == pytest.approx((b - c) / len(labels))
    assert t.verdict == word


def test_alpha_moves_the_line():
    labels, a, other = pairs(both=500, only_new=14, only_old=5, neither=10)  # p = 0.064
    assert comparison.seed_test(0, labels, a, other, alpha=0.05).verdict == "no significant difference at α = 0.05"
    assert comparison.seed_test(0, labels, a, other, alpha=0.1).verdict == "better"


def test_combined_verdict_needs_every_seed_to_agree():
    def tests(*bc):
        out = []
        for seed, (b, c) in enumerate(bc):
            labels, a, other = pairs(both=1000, only_new=b, only_old=c, neither=20)
            out.append(comparison.seed_test(seed, labels, a, other, 0.05))
        return out

    better = comparison.combine("lstm", "cnn", tests((30, 5), (25, 4), (40, 10)), 0.05, 1000)
    assert better.combined == "better" and better.reason == "lstm is better than cnn in each of 3 seeds, p ≤ 0.05"
    assert (better.pooled_b, better.pooled_c) == (95, 19)
    worse = comparison.combine("lstm", "cnn", tests((5, 30), (4, 25), (10, 40)), 0.05, 1000)
    assert worse.combined == "worse"
    # Two seeds significant, one not: the pooled counts (75 : 19) would be "significant"; the verdict is not.
    mixed = comparison.combine("lstm", "cnn", tests((30, 5), (25, 4), (20, 10)), 0.05, 1000)
    assert mixed.combined == "no significant difference at α = 0.05"
    assert mixed.reason.startswith("lstm is significantly better than cnn in 2 of 3 seeds, worse in 0,")
    neither = comparison.combine("lstm", "cnn", tests((10, 8), (9, 9)), 0.05, 1000)
    assert neither.combined == "no significant difference at α = 0.05"
    assert neither.reason == "neither is significantly better in any of the 2 seeds"
    split = comparison.combine("lstm", "cnn", tests((30, 5), (5, 30)), 0.05, 1000)
    assert split.combined == "no significant difference at α = 0.05"
    assert comparison.combine("a", "b", [], 0.05, 10).combined == "no significant difference at α = 0.05"


VARIANTS = [
    Variant("cnn_lstm", CNN_LSTM, {"backbone": "small", "head": "lstm"}, 776_794),
    Variant("vgg", PLAIN_CNN, {"backbone": "vgg", "head": "linear"}, 288_170),
    Variant("small_cnn", PLAIN_CNN, {"backbone": "small", "head": "linear"}, 16_794),
    Variant("row_lstm", LSTM_ONLY, {"backbone": "none", "head": "lstm"}, 559_626),
]


def run(trial, variant, seed, val, test_acc, train_s=10.0, img_s=100.0):
    test = {"acc": test_acc, "precision": test_acc - 0.01, "recall": test_acc - 0.02, "f1": test_acc - 0.03}
    return Run(trial, variant, seed, "completed", val, 2, [val - 0.1, val], train_s, img_s, f"ckpt/{trial}", test)


RUNS = [
    run("a0", "cnn_lstm", 0, 0.95, 0.94, train_s=20, img_s=900),
    run("a1", "cnn_lstm", 1, 0.97, 0.96, train_s=30, img_s=800),
    # vgg: the better test accuracy, the worse validation accuracy; the contender must be small_cnn
    run("b0", "vgg", 0, 0.90, 0.99),
    run("b1", "vgg", 1, 0.91, 0.99),
    run("c0", "small_cnn", 0, 0.93, 0.90),
    run("c1", "small_cnn", 1, 0.92, 0.91),
    run("d0", "row_lstm", 0, 0.99, 0.97),
]


def test_table_rows_are_means_over_seeds_best_validation_first():
    rows = comparison.summarize(VARIANTS, RUNS)
    assert [r["model"] for r in rows] == ["row_lstm", "cnn_lstm", "small_cnn", "vgg"]
    lstm = rows[1]
    assert lstm["runs"] == 2 and lstm["kind"] == CNN_LSTM and lstm["params"] == 776_794
    assert lstm["test_acc"] == pytest.approx(0.95) and lstm["test_acc_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert (lstm["precision"], lstm["recall"], lstm["f1"]) == pytest.approx((0.94, 0.93, 0.92))
    assert (lstm["val_acc"], lstm["train_s"], lstm["img_s"]) == pytest.approx((0.96, 25.0, 850.0))
    assert math.isnan(rows[0]["test_acc_std"])  # one seed: no standard deviation
    assert comparison.best_of(rows, CNN_LSTM) == "cnn_lstm" and comparison.best_of(rows, PLAIN_CNN) == "small_cnn"

    table = comparison.table_markdown(rows)
    header = table.splitlines()[0]
    for column in ("test acc (mean ± std)", "precision", "recall", "F1", "params", "train time (s)", "img/s"):
        assert column in header
    assert (
        "| cnn_lstm | CNN-LSTM | 2 | 95.00% ± 1.41% | 0.9400 | 0.9300 | 0.9200 | 96.00% | 776,794 | 25 | 850 |" in table
    )
    assert "| row_lstm | LSTM only | 1 | 97.00% | " in table


def test_verdict_pairs_the_contenders_by_seed_on_their_predictions():
    labels, a, other = pairs(both=100, only_new=20, only_old=2, neither=8)
    _, a1, other1 = pairs(both=100, only_new=9, only_old=7, neither=14)
    predictions = {"a0": a, "c0": other, "a1": a1, "c1": other1, "b0": labels, "b1": labels}
    rows = comparison.summarize(VARIANTS, RUNS)
    v = comparison.verdict(rows, RUNS, predictions, labels, alpha=0.05)
    assert (v.a, v.b, v.images) == ("cnn_lstm", "small_cnn", 130)
    assert [(t.seed, t.b, t.c, t.verdict) for t in v.seeds] == [
        (0, 20, 2, "better"),
        (1, 9, 7, "no significant difference at α = 0.05"),
    ]
    assert [t.p_value for t in v.seeds] == pytest.approx([two_sided(20, 2), two_sided(9, 7)])
    assert v.combined == "no significant difference at α = 0.05"
    lines = comparison.verdict_lines(v)
    assert lines[0].endswith("**no significant difference at α = 0.05**") and len(lines) == 4
    assert comparison.verdict(rows[:1], RUNS, predictions, labels, 0.05) is None  # no plain CNN: no verdict


def test_report_and_plots(tmp_path):
    rows = comparison.summarize(VARIANTS, RUNS)
    labels, a, other = pairs(both=100, only_new=20, only_old=2, neither=8)
    v = comparison.verdict(rows, RUNS, {"a0": a, "c0": other}, labels, alpha=0.05)
    assert [t.seed for t in v.seeds] == [0] and v.combined == "better"
    report = comparison.report_markdown("Comparison x", "setup text", rows, VARIANTS, v, list(comparison.PLOTS))
    assert "The best CNN-LSTM, **cnn_lstm**, against the best plain CNN, **small_cnn**" in report
    assert ": **better** (cnn_lstm is better than small_cnn in its one seed, p ≤ 0.05)." in report
    assert all(f"![{name}]({name})" in report for name in comparison.PLOTS)
    assert "| small_cnn | plain CNN | backbone=small, head=linear |" in report

    test = {"acc": 0.9, "f1": 0.9, "confusion": [[5, 1, 0], [0, 6, 0], [1, 0, 7]]}
    best = Run("d0", "row_lstm", 0, "completed", 0.99, 2, [0.9, 0.99], 1.0, 1.0, "c", test)
    comparison.plot_val_curves(rows, RUNS, tmp_path / "val_acc.png")
    comparison.plot_test_vs_time(rows, RUNS, tmp_path / "test_vs_time.png")
    comparison.plot_confusion(best, tmp_path / "confusion.png")
    for name in comparison.PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_variants_are_whole_models_checked_before_any_work():
    models = comparison.check_variants(Config())
    assert list(models) == list(PRESET_VARIANTS) and models["resnet"].backbone == "resnet"
    assert models["resnet"].head == "linear" and models["resnet"].hidden == 128  # the rest: the config's
    cfg = load_config(None, ["compare.variants.wide={backbone: small, head: lstm, width: 32}", "model.hidden=64"])
    models = comparison.check_variants(cfg)
    assert len(models) == 7 and models["wide"].width == 32 and models["wide"].hidden == 64

    with pytest.raises(ConfigError, match=r"^compare.variants.bad: not a valid model \(config value model.head: "):
        comparison.check_variants(load_config(None, ["compare.variants.bad={backbone: none, head: linear}"]))
    with pytest.raises(ConfigError, match=r"^compare\.variants cnn_lstm and again are the same model$"):
        comparison.check_variants(load_config(None, ["compare.variants.again={backbone: small, width: 16}"]))
    with pytest.raises(ConfigError, match=r"unknown config key 'compare.variants.x.widht' \(did you mean"):
        load_config(None, ["compare.variants.x={widht: 8}"])
    with pytest.raises(ConfigError, match=r"compare\.seeds: 0 is outside"):
        load_config(None, ["compare.seeds=0"])


def test_compare_job_refuses_a_bad_variant_before_ray_starts(tmp_path):
    res = run_job(
        "compare.py", "--storage", str(tmp_path), "--set", "compare.variants.x={backbone: none, head: linear}"
    )
    assert res.returncode == 2 and not ray_started(res.stdout + res.stderr)
    assert res.stderr.startswith("error: compare.variants.x: not a valid model (config value model.head: ")
    assert res.stderr.count("\n") == 1 and not any(tmp_path.iterdir())
