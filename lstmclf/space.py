"""Search spaces over the config's dotted keys, checked and sampled before any trial starts.

A space maps a key to a Tune distribution, written as in YAML:

    model.lstm_layers: {randint: [1, 5]}       # Tune's randint: upper bound excluded
    model.dropout: {uniform: [0.0, 0.5]}
    optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
    optim.name: {choice: [adam, nadam, adamw, sgd]}
    model.axis: {grid: [rows, cols]}           # every value, times num_samples
    model.hidden: 64                           # a constant

Keys must be config fields; bounds and choices are checked against the field's type and range,
and every sampled trial config is validated as a whole, so a typo or an impossible combination
is one clear ConfigError before the cluster is used. Plain Python here (no Ray): lstmclf.tuning
turns the checked space into Tune's domain objects.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from lstmclf.config import Config, ConfigError, dotted_keys, unknown_key
from lstmclf.errors import shown

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
# Keys a trial may not vary: where results go, the search itself, and the workers (how many trials
# run at once is derived from them).
FIXED_PREFIXES = ("storage.", "tune.", "scaling.")


@dataclass(frozen=True)
class Dist:
    kind: str  # one of KINDS, or "const"
    args: tuple  # (low, high) for ranges, the values for choice / grid, (value,) for const

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "uniform":
            return rng.uniform(*self.args)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.args[0]), math.log(self.args[1])))
        if self.kind == "randint":
            return rng.randrange(*self.args)
        if self.kind == "choice":
            return rng.choice(self.args)
        return self.args[0]  # const (grid values are expanded, not sampled)


def parse(space: dict[str, Any], base: Config) -> dict[str, Dist]:
    """Check keys, forms, types and bounds of a space; one ConfigError line per problem."""
    fields = dotted_keys()
    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.space must be a non-empty mapping of config keys to distributions")
    out = {}
    for key, spec in space.items():
        where = f"tune.space {key}"
        if key not in fields:
            raise ConfigError(f"tune.space: {unknown_key(key, fields)}")
        if key.startswith(FIXED_PREFIXES):
            raise ConfigError(f"{where}: {key.split('.')[0]} keys cannot be searched")
        out[key] = dist = _parse_one(where, spec, fields[key])
        for value in _edge_values(dist):
            try:
                base.override({key: value})
            except ConfigError as e:
                raise ConfigError(f"{where}: value {shown(value)} is invalid ({e})") from None
    return out


def _parse_one(where: str, spec: Any, tp: type) -> Dist:
    if not isinstance(spec, dict):
        return Dist("const", (spec,))
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: expected one of {', '.join(KINDS)} (e.g. {{choice: [a, b]}}), got {shown(spec)}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} needs a non-empty list, got {shown(args)}")
    if kind in ("choice", "grid"):
        return Dist(kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: {kind} needs [lower, upper] numbers, got {shown(args)}")
    low, high = args
    if kind == "randint":
        if tp is not int or not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: randint needs integer bounds and an integer key")
    elif tp is not float:
        raise ConfigError(f"{where}: {kind} draws floats but {where.split()[-1]} is {tp.__name__}")
    if not low < high:
        raise ConfigError(f"{where}: lower bound {low} is not below upper bound {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs a positive lower bound, got {low}")
    return Dist(kind, (low, high))


def _edge_values(d: Dist) -> tuple:
    """Values worth checking one by one: every choice, and both ends of a range."""
    if d.kind == "randint":
        return (d.args[0], d.args[1] - 1)  # upper bound excluded
    return d.args


def sample(cfg: Config, dists: dict[str, Dist], num_samples: int, seed: int) -> list[dict[str, Any]]:
    """The trials' overrides: every grid combination times `num_samples` random draws, each
    validated as a whole config (a combination that no config allows is an error now)."""
    rng = random.Random(seed)
    grid_keys = [k for k, d in dists.items() if d.kind == "grid"]
    combos = list(itertools.product(*(dists[k].args for k in grid_keys))) or [()]
    trials = []
    for combo in combos:
        for _ in range(num_samples):
            overrides = {k: d.sample(rng) for k, d in dists.items() if d.kind != "grid"}
            overrides |= dict(zip(grid_keys, combo, strict=True))
            try:
                cfg.override(overrides)
            except ConfigError as e:
                raise ConfigError(f"tune.space: sampled trial {len(trials) + 1} {overrides} is invalid ({e})") from None
            trials.append(overrides)
    return trials
