"""Does the LSTM help? Train a set of models on the same data, budget, batch and schedule, several seeds
each, as one Ray Tune experiment; score every run on the test set; report a table per model, McNemar's
exact test between the best CNN-LSTM and the best plain CNN, and plots.

    python jobs/compare.py                                   # the preset models, 3 seeds, bundled MNIST sample
    python jobs/compare.py --smoke                           # a slice of the sample, 2 seeds: a first look
    python jobs/compare.py --data ../shared/data/mnist --epochs 4 --name study
    python jobs/compare.py --resume --name study             # pick up an interrupted comparison
    python jobs/compare.py --set 'compare.variants.wide={backbone: small, head: lstm, width: 32}'
    ray job submit --working-dir . -- python jobs/compare.py --storage s3://bucket/experiments

The models are compare.variants (name -> the model keys it changes), the seeds compare.seeds, the
significance level compare.alpha. report.md, comparison.json and the plots go beside the experiment's
results.
"""

import argparse

from lstmclf import cli
from lstmclf.cli import add_config_args, add_experiment_args, config_from_args, run_main
from lstmclf.comparison import check_variants
from lstmclf.config import Config

# Seconds of training per run on a slice of the bundled sample (ResNet-18 on a CPU is slow: few images).
SMOKE = {**cli.SMOKE, "data.limit_train": 100, "data.limit_test": 200, "compare.seeds": 2}


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and docs with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--seeds", type=int, help="runs per model, with train.seed 0 .. N-1 (compare.seeds)")
    p.add_argument("--alpha", type=float, help="significance level of the verdict (compare.alpha)")
    add_experiment_args(p, smoke="a slice of the sample, small models, 2 seeds: a first look")
    return p


def build_config(a: argparse.Namespace) -> Config:
    """The comparison's config from the command line, its variants checked, as main() runs it (tests check
    the documented commands with it)."""
    for key, flag in (("compare.seeds", a.seeds), ("compare.alpha", a.alpha)):
        if flag is not None:
            a.set.append(f"{key}={flag}")
    cfg = config_from_args(a, prefix="compare", preset=SMOKE if a.smoke else None, pick_name=not a.resume)
    check_variants(cfg)
    return cfg


def main() -> None:
    a = build_parser().parse_args()
    cfg = build_config(a)

    from lstmclf.comparing import REPORT, run_comparison  # Ray is imported once the config is valid
    from lstmclf.comparison import table_markdown, verdict_lines
    from lstmclf.driver import latest_experiment

    if not cfg.storage.name:
        cfg = cfg.override({"storage.name": latest_experiment(cfg.storage.path, cfg.storage.s3_endpoint)})
    out = run_comparison(cfg, resume=a.resume, verbose=a.verbose)
    print("\n" + table_markdown(out.rows))
    for line in verdict_lines(out.verdict):
        print(line.replace("**", ""))
    trained = sum(r.status != "error" for r in out.runs)
    print(
        f"\nexperiment {out.experiment}: {len(out.runs)} runs ({trained} trained), "
        f"{out.scored} scored on the test set now, {out.reused} scored before"
    )
    print(f"report:  {out.experiment}/{REPORT}   (also comparison.json, results.md and the plots)")


if __name__ == "__main__":
    run_main(main)
