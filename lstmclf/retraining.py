"""Scheduled retraining: train the champion's recipe on the current data, score the challenger and the
champion on the same frozen test set, and promote only when the gate says so (`lstmclf.promotion`).

One run per slot (`lstmclf.slots`: a claim with a lease in the registry). Each step is recorded in the
slot's record before the next starts, so a rerun after a crash goes on from the last step done and
never trains, registers or promotes twice:

    claim     the slot, and with it the recipe: the champion's model/optim/loss/train sections (the
              config's when there is no champion), changed by what the command line sets
    train     with Ray Train (or a short Ray Tune search) in {storage}/retrain-{model}-{slot}; a rerun
              resumes it from its checkpoints
    register  the challenger as a new version of the model, whatever the outcome (audit); a rerun finds
              it again by its checkpoint
    decide    both models scored on the same test images; the gate; the record kept in the slot
    promote   by the registry's conditional write, against the champion the decision was made on
    record    decision.json beside the new version (create-only); the slot done
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstmclf import storage
from lstmclf.checkpoint import load_checkpoint
from lstmclf.config import RECIPE, Config
from lstmclf.data import Split, Splits, dataset_digest, load_test
from lstmclf.driver import load_data
from lstmclf.errors import ConfigError, RegistryError
from lstmclf.evaluation import headline, predict
from lstmclf.promotion import Gate, decide
from lstmclf.registry import Registry
from lstmclf.slots import Claim, Lease, SlotLost, claim, run_name

FORMAT = 1
TEST_FILES = ("test_images", "test_labels")


@dataclass(frozen=True)
class Request:
    cfg: Config  # the job's config: data, storage, registry, scaling, retrain (and the first recipe)
    slot: str
    recipe_changes: dict[str, Any]  # recipe keys the command line sets: they change the champion's recipe
    dry_run: bool = False  # decide, print, promote nothing, register nothing
    force: str = ""  # a reason: promote whatever the gate says, and record why
    verbose: bool = False


def recipe_for(cfg: Config, champion_config: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """The recipe sections to train: the champion's when there is one, else the config's; `changes`
    on top."""
    d = cfg.to_dict()
    if champion_config is not None:
        try:
            champion = Config.from_dict({s: champion_config.get(s, {}) for s in RECIPE}).to_dict()
        except ConfigError as e:
            raise ConfigError(f"the champion's recipe no longer validates ({e}); give one with --config") from None
        d |= {s: champion[s] for s in RECIPE}
    trained = Config.from_dict(d).override(changes).to_dict()
    return {s: trained[s] for s in RECIPE}


def retrain(req: Request) -> str:
    """Run (or resume, or skip) the slot; returns what happened: promoted, rejected, dry-run, done or
    held. Prints a line per step and the decision."""
    cfg, slot = req.cfg, req.slot
    model = cfg.retrain.model_name
    registry = Registry(cfg.storage.registry, cfg.storage.s3_endpoint)
    run_uri = storage.join(cfg.storage.path, run_name(model, slot))

    def fields() -> dict[str, Any]:  # a new slot's record: the recipe is fixed here, once
        champion = registry.champion_record(model)
        champion_config = registry.show(model, champion[0]["version"])["config"] if champion else None
        return {
            "recipe": recipe_for(cfg, champion_config, req.recipe_changes),
            "recipe_from": f"champion version {champion[0]['version']}" if champion else "the config (no champion)",
            "run": run_uri,
        }

    got = claim(registry, model, slot, cfg.retrain.lease_seconds, fields)
    if got.lease is None:
        print(_not_ours(model, got), flush=True)
        return got.status
    lease = got.lease
    if got.status == "claimed":
        print(f"slot {slot} of {model}: claimed; the recipe of {got.record['recipe_from']}; run {run_uri}", flush=True)
    else:
        before = got.record["taken_over_from"]
        how = "which let go of it" if before["state"] == "released" else "which is gone"
        done = [k for k in ("checkpoint", "version", "decision") if k in got.record]
        print(
            f"slot {slot} of {model}: taken over from {before['holder']}, {how}; "
            f"resuming after its {done[-1] if done else 'claim'}",
            flush=True,
        )
    with lease:
        try:
            return _run(req, registry, lease)
        except KeyboardInterrupt:
            if lease.lost:
                raise SlotLost(lease.lost) from None
            raise


def _not_ours(model: str, got: Claim) -> str:
    r = got.record
    if got.status == "done":
        return (
            f"slot {r['slot']} of {model} is already done ({r.get('outcome')}, {r.get('finished_at')}); "
            f"decision: {r.get('decision_uri')}"
        )
    return (
        f"slot {r.get('slot')} of {model} is held by {r.get('holder')} (lease until {r.get('expires')}); nothing to do"
    )


def _run(req: Request, registry: Registry, lease: Lease) -> str:
    cfg, model = req.cfg, req.cfg.retrain.model_name
    record = lease.record
    if "decision" in record:  # decided before a crash: only the promotion and the record are left
        if req.dry_run:
            print("\n".join(summary_lines(record["decision"])), flush=True)
            lease.release()
            return "dry-run"
        return _conclude(req, registry, lease)
    run_cfg = Config.from_dict({**cfg.to_dict(), **record["recipe"]}).override(
        {"storage.name": run_name(model, req.slot)}
    )
    splits = load_data(run_cfg)
    test = _test_set(run_cfg, splits)  # read now: a bad test set fails before any training
    if "checkpoint" not in record:
        record = lease.update(checkpoint=_train(run_cfg, splits, req.verbose))
    if req.dry_run:
        decision = _decide(req, registry, record, run_cfg, test, registry.champion_record(model))
        lease.release(dry_run=decision["outcome"])
        print("\n".join(summary_lines(decision)), flush=True)
        return "dry-run"
    if "version" not in record:
        checkpoint = record["checkpoint"]
        version = registry.find_version(model, checkpoint) or registry.register(checkpoint, model, source=record["run"])
        print(f"registered the challenger as {model} version {version}", flush=True)
        record = lease.update(version=version)
    champion = registry.champion_record(model)
    decision = _decide(req, registry, record, run_cfg, test, champion)
    lease.update(decision=decision, champion_etag=champion[1] if champion else None)
    return _conclude(req, registry, lease)


def _train(cfg: Config, splits: Splits, verbose: bool) -> str:
    """The best checkpoint of a Ray Train run (or of a Ray Tune search) of `cfg`, resumed if it exists."""
    if cfg.retrain.search:
        from lstmclf.tuning import run_experiment

        return run_experiment(cfg, splits=splits, verbose=verbose).best_checkpoint
    from lstmclf.training import fit

    return fit(cfg, splits=splits, verbose=verbose).best_checkpoint


def _decide(
    req: Request,
    registry: Registry,
    record: dict[str, Any],
    cfg: Config,
    test: tuple[Split, int, dict[str, Any]],
    champion: tuple[dict[str, Any], str] | None,
) -> dict[str, Any]:
    """Score the challenger (its registered version; in a dry run, its checkpoint) and the champion on
    the same test images, apply the gate, and build the decision record. Its outcome is what the gate
    (or --force) says; `_conclude` makes it final."""
    model, r = cfg.retrain.model_name, cfg.retrain
    test, num_classes, test_info = test
    version = record.get("version")
    state = (
        registry.load(model, version)[2] if version else load_checkpoint(record["checkpoint"], cfg.storage.s3_endpoint)
    )
    ours, predicted = predict(state, test)
    theirs, champion_predicted = None, None
    if champion is not None:
        theirs, champion_predicted = predict(registry.load(model, champion[0]["version"])[2], test)
    gate = Gate(r.margin, r.alpha, r.max_recall_drop)
    d = decide(test.labels, predicted, champion_predicted, num_classes, gate)
    promote = (d.promote or bool(req.force)) and not req.dry_run
    verdict = "promote" if d.promote or req.force else "reject"
    return {
        "format": FORMAT,
        "model": model,
        "slot": req.slot,
        "outcome": f"would {verdict} (dry run)" if req.dry_run else ("promoted" if promote else "rejected"),
        "reasons": d.reasons,
        "forced": req.force or None,
        "dry_run": req.dry_run,
        "challenger": {
            "version": version,
            "checkpoint": record["checkpoint"],
            "run": record["run"],
            "recipe_from": record["recipe_from"],
            **headline(ours),
            "recall_per_class": d.challenger_recall,
        },
        "champion": None
        if champion is None
        else {"version": champion[0]["version"], **headline(theirs), "recall_per_class": d.champion_recall},
        "mcnemar": {"b": d.b, "c": d.c, "p_value": d.p_value},
        "worst_class": {"class": d.worst_class, "recall_drop": d.worst_drop},
        "thresholds": {"margin": r.margin, "alpha": r.alpha, "max_recall_drop": r.max_recall_drop},
        "test": test_info,
        "data": {"path": cfg.data.path, "digest": dataset_digest(cfg.data.path, cfg.storage.s3_endpoint)},
        "code": code_version(),
        "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "by": f"{socket.gethostname()}:{os.getpid()}",
    }


def _conclude(req: Request, registry: Registry, lease: Lease) -> str:
    """Promote if the decision says so (unless the champion moved since it was made), write
    decision.json beside the version and mark the slot done."""
    record = lease.record
    model, version, decision = req.cfg.retrain.model_name, record["version"], dict(record["decision"])
    if decision["outcome"] == "promoted":
        now = registry.champion_record(model)
        if now and now[0]["version"] == version:
            pass  # promoted by this slot's earlier run, which stopped before it could record it
        elif (now[1] if now else None) != record["champion_etag"]:
            decision |= {"outcome": "rejected", "reasons": [_moved(now), *decision["reasons"]]}
        else:
            try:
                registry.promote(model, version, expected=record["champion_etag"])
            except RegistryError:
                moved = _moved(registry.champion_record(model))
                decision |= {"outcome": "rejected", "reasons": [moved, *decision["reasons"]]}
    uri = registry.write_decision(model, version, decision)
    lease.finish(outcome=decision["outcome"], decision_uri=uri)
    print("\n".join([*summary_lines(decision), f"decision: {uri}"]), flush=True)
    return decision["outcome"]


def _moved(now: tuple[dict[str, Any], str] | None) -> str:
    return (
        f"the champion changed (to {'version ' + str(now[0]['version']) if now else 'none'}) after the decision was "
        "made against it: not promoted"
    )


def _test_set(cfg: Config, splits: Splits) -> tuple[Split, int, dict[str, Any]]:
    """The frozen test set (`retrain.test_data`'s test files, whole) or the current data's test split,
    its number of classes, and how to find it again."""
    endpoint, uri = cfg.storage.s3_endpoint, cfg.retrain.test_data
    if uri:
        test = load_test(uri, num_classes=splits.num_classes, endpoint=endpoint)
        info = {"data": uri, "images": len(test)}
    else:
        test, uri = splits.test, cfg.data.path
        info = {"data": uri, "images": len(test), "limit_test": cfg.data.limit_test, "seed": cfg.data.seed}
    return test, splits.num_classes, {**info, "digest": dataset_digest(uri, endpoint, TEST_FILES)}


def code_version() -> dict[str, str | None]:
    """The package's version and, when this code is a git checkout of lstmclf, its commit (`+dirty`
    with uncommitted changes to tracked files). No git, no repository (an image), or the package
    installed inside some other repository gives None."""
    try:
        version = importlib.metadata.version("lstmclf")
    except importlib.metadata.PackageNotFoundError:
        version = None
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        top, commit = git("rev-parse", "--show-toplevel", "HEAD").split()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"lstmclf": version, "git": None}
    if Path(top).resolve() != here.parent:
        return {"lstmclf": version, "git": None}
    return {"lstmclf": version, "git": commit + ("+dirty" if dirty else "")}


def summary_lines(d: dict[str, Any]) -> list[str]:
    """The decision as a few lines for the console (and the README)."""
    ch, champ, t = d["challenger"], d["champion"], d["test"]
    listed = t["digest"].get("files", {})
    digest = (
        f"manifest.json sha256 {t['digest']['manifest.json'][:12]}"
        if "manifest.json" in t["digest"]
        else "sha256 " + ", ".join(f"{sha[:12]}" for sha in listed.values())
    )
    name = f"{d['model']} version {ch['version']}" if ch["version"] else f"{d['model']} (not registered)"
    against = f"champion version {champ['version']}" if champ else "no champion"
    lines = [f"challenger {name} vs {against}, on {t['images']} test images of {t['data']} ({digest})"]
    if champ:
        gain = ch["acc"] - champ["acc"]
        th, m = d["thresholds"], d["mcnemar"]
        lines += [
            f"  accuracy  challenger {ch['acc']:.2%}  champion {champ['acc']:.2%}  "
            f"gain {gain:+.2%} (margin {th['margin']:.2%})",
            f"  McNemar   b {m['b']} (only the challenger right)  c {m['c']} (only the champion right)  "
            f"p {m['p_value']:.3g} (alpha {th['alpha']:g})",
            f"  recall    largest drop {d['worst_class']['recall_drop']:.2%} (class {d['worst_class']['class']}; "
            f"at most {th['max_recall_drop']:.2%})"
            if d["worst_class"]["recall_drop"] > 0
            else f"  recall    no class's recall drops (at most {th['max_recall_drop']:.2%} allowed)",
        ]
    else:
        lines.append(f"  accuracy  challenger {ch['acc']:.2%}")
    why = "; ".join(d["reasons"])
    if d["forced"]:
        why = f"forced ({d['forced']}); the gate said: {why}"
    if d["outcome"] == "promoted":
        was = f"version {champ['version']}" if champ else "none"
        lines.append(f"promoted: {d['model']} version {ch['version']} is the champion (was {was}): {why}")
    else:
        lines.append(f"{d['outcome']}: {why}")
    return lines
