"""Train one CNN-LSTM config with Ray Train (DDP), then evaluate its best checkpoint on the test set.

    python jobs/train.py                                   # defaults: bundled MNIST sample, ./runs
    python jobs/train.py --config recipe.yaml --workers 2 --set model.lstm_layers=3
    python jobs/train.py --data ../shared/data/mnist --name full-mnist   # rerun the same name: resumes

Starts a local Ray unless RAY_ADDRESS points at a cluster (as under `ray job submit`).
"""

import argparse

from lstmclf.cli import add_config_args, config_from_args, run_main


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and manifests with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    return p


def main() -> None:
    a = build_parser().parse_args()
    cfg = config_from_args(a, prefix="train")

    from lstmclf.evaluation import test_line
    from lstmclf.training import fit  # Ray is imported only once the config is valid

    out = fit(cfg, verbose=a.verbose)
    best = out.best_metrics
    chosen = (
        f"best val_acc {best['val_acc']:.2%} (epoch {best['epoch']})"
        if "val_acc" in best
        else f"no validation split: kept the last epoch ({best['epoch']})"
    )
    print(f"\nrun {out.run_path}: {out.epochs_run} epochs, {chosen}")
    print(test_line(out.test_metrics))
    print(f"best checkpoint: {out.best_checkpoint}")


if __name__ == "__main__":
    run_main(main)
