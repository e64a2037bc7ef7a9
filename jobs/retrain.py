"""Retrain the champion on the current data and promote the challenger only if it is really better.

    python jobs/retrain.py --smoke --slot try-1                       # seconds long, bundled sample
    python jobs/retrain.py --config retrain.yaml --slot nightly-20261127
    python jobs/retrain.py --config retrain.yaml --dry-run            # decide, promote nothing
    python jobs/retrain.py --config retrain.yaml --force "labels fixed upstream"

The recipe is the champion's (model, optim, loss and train sections; the config's when there is no
champion yet), changed by what --set, --epochs or --smoke set on this command line. The challenger is
trained with Ray Train, registered as a new version, and scored with the champion on the same test
images; it is promoted (by the registry's conditional write) only when it is better by retrain.margin,
McNemar's exact test says so at retrain.alpha and no class's recall drops by more than
retrain.max_recall_drop. decision.json beside the new version says why.

One run per slot (--slot, else the start time rounded down to retrain.slot_hours): a rerun of a slot
that finished does nothing, a rerun of one that crashed resumes it, and of two runs at once one works
and the other says who holds the slot. Exit status 0 for promoted, rejected, already done and held.
"""

import argparse
import datetime as dt

from lstmclf.cli import SMOKE, add_config_args, config_from_args, run_main
from lstmclf.config import Config, parse_overrides, recipe_values
from lstmclf.errors import ConfigError
from lstmclf.paths import absolute_paths
from lstmclf.slots import check_slot, run_name, slot_from_time

WRITES = ("storage.path", "storage.registry")


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and manifests with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--registry", help="model registry: local directory or s3://bucket/prefix (storage.registry)")
    p.add_argument("--model", help="the registry model retrained (retrain.model_name)")
    p.add_argument("--slot", help="this run's slot, e.g. the scheduled Job's name (default: from the time)")
    p.add_argument("--test-data", help="frozen test set: a dataset whose test files are used (retrain.test_data)")
    p.add_argument("--smoke", action="store_true", help="tiny data and model: a seconds-long run")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="decide and print; register and promote nothing")
    what.add_argument("--force", metavar="REASON", help="promote whatever the gate says; REASON is recorded")
    return p


def build_config(a: argparse.Namespace) -> tuple[Config, str, dict]:
    """The job's config, its slot and the recipe values this command line sets, all checked (without
    importing torch or Ray): what main() runs, and what the tests check written commands with."""
    if a.name:
        raise ConfigError("--name: a retraining run is named after its model and slot (retrain-MODEL-SLOT)")
    if a.force is not None and not a.force.strip():
        raise ConfigError("--force needs a reason, recorded in the decision")
    preset = SMOKE if a.smoke else {}
    cfg = config_from_args(a, prefix="retrain", preset=preset, pick_name=False, writes=WRITES)
    flags = {"storage.registry": a.registry, "retrain.model_name": a.model, "retrain.test_data": a.test_data}
    cfg = absolute_paths(cfg.override({k: v for k, v in flags.items() if v is not None}), WRITES)
    slot = check_slot(a.slot) if a.slot else slot_from_time(dt.datetime.now(dt.UTC), cfg.retrain.slot_hours)
    run_name(cfg.retrain.model_name, slot)
    keys = {*preset, *parse_overrides(a.set), *(["train.epochs"] if a.epochs is not None else [])}
    return cfg, slot, recipe_values(cfg, keys)


def main() -> None:
    a = build_parser().parse_args()
    cfg, slot, changes = build_config(a)

    from lstmclf.retraining import Request, retrain  # Ray is imported only once the config is valid

    retrain(Request(cfg, slot, changes, dry_run=a.dry_run, force=a.force or "", verbose=a.verbose))


if __name__ == "__main__":
    run_main(main, one_line=True)
