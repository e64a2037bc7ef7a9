"""Tune CNN-LSTM variants with Ray Tune: every trial is a Ray Train DDP run, ASHA stops the weak ones.

    python jobs/tune.py                                    # preset space, bundled MNIST sample, ./runs
    python jobs/tune.py --smoke                            # seconds-long first look
    python jobs/tune.py --num-samples 16 --max-epochs 8 --data ../shared/data/mnist --name mnist-search
    python jobs/tune.py --resume --name mnist-search       # pick up an interrupted experiment
    python jobs/tune.py --set 'tune.space.model.hidden={choice: [64, 128]}'
    ray job submit --working-dir . -- python jobs/tune.py --storage s3://bucket/experiments

The experiment gets a ranked results table (CSV, Parquet, Markdown), the best trial's config as a
recipe for `jobs/train.py --config`, and the best checkpoint's test metrics.
"""

import argparse

from lstmclf import cli
from lstmclf.cli import add_config_args, add_experiment_args, config_from_args, run_main

SMOKE = {**cli.SMOKE, "tune.num_samples": 2}  # a seconds-long experiment of two trials


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and manifests with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--num-samples", type=int, help="trials drawn from the space (tune.num_samples)")
    p.add_argument("--workers-per-trial", type=int, dest="workers", help="DDP workers per trial (same as --workers)")
    p.add_argument("--max-epochs", type=int, dest="epochs", help="epochs a trial may run (same as --epochs)")
    p.add_argument("--search", choices=["random", "optuna"], help="tune.search")
    add_experiment_args(p, smoke="tiny data, model and trial count: a seconds-long run")
    return p


def main() -> None:
    a = build_parser().parse_args()
    for key, flag in (("tune.num_samples", a.num_samples), ("tune.search", a.search)):
        if flag is not None:
            a.set.append(f"{key}={flag}")
    # --resume without a name (from --name or the config) takes the newest experiment under the storage path.
    cfg = config_from_args(a, prefix="tune", preset=SMOKE if a.smoke else None, pick_name=not a.resume)

    from lstmclf.driver import latest_experiment
    from lstmclf.evaluation import test_line
    from lstmclf.tuning import markdown_table, run_experiment  # Ray is imported once the config is valid

    if not cfg.storage.name:
        cfg = cfg.override({"storage.name": latest_experiment(cfg.storage.path, cfg.storage.s3_endpoint)})
    out = run_experiment(cfg, resume=a.resume, verbose=a.verbose)
    best = out.table.slice(0, 1).to_pylist()[0]
    stopped = out.table["status"].to_pylist().count("stopped early")
    print("\n" + markdown_table(out.table))
    print(
        f"experiment {out.experiment}: {out.table.num_rows} trials, {stopped} stopped early "
        f"(tune.scheduler {cfg.tune.scheduler})"
    )
    print(f"best trial {best['trial_id']}: val_acc {best['best_val_acc']:.2%} at epoch {best['best_epoch']}")
    print(test_line(out.test_metrics))
    print(f"results:         {out.experiment}/results.md (also .csv, .parquet)")
    print(f"best recipe:     {out.best_recipe}   (python jobs/train.py --config {out.best_recipe})")
    print(f"best checkpoint: {out.best_checkpoint}")


if __name__ == "__main__":
    run_main(main)
