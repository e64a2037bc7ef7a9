"""Search spaces over the config's dotted keys, checked and sampled before any trial starts.

A space maps a key to a Tune distribution, written as in YAML:

    model.lstm_layers: {randint: [1, 5]}       # Tune's randint: upper bound excluded
    model.dropout: {uniform: [0.0, 0.5]}
    optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
    optim.name: {choice: [adam, nadam, adamw, sgd]}
    model.axis: {grid: [rows, cols]}           # every value, times num_samples
    model.hidden: 64                           # a constant
    model: {grid: [{backbone: vgg, head: linear}, {backbone: small, width: 32}]}   # bundles of a section's keys

Keys must be config fields; bounds and choices are checked against the field's type and range,
and every sampled trial config is validated as a whole, so a typo or an impossible combination
is one clear ConfigError before the cluster is used. A key may also name a section (`model`, `optim`,
...): its values (grid, choice or a constant) are partial mappings of that section, several keys that
change together (a model variant); a trial gets them as dotted overrides (`columns` names them), the
keys a mapping leaves out at the base config's values. Plain Python here (no Ray): lstmclf.tuning
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

SECTION_KINDS = ("choice", "grid")  # a section's mappings are picked, never drawn from a range

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
    sections = {k.split(".")[0] for k in fields}
    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.space must be a non-empty mapping of config keys to distributions")
    out = {}
    for key, spec in space.items():
        where = f"tune.space {key}"
        if key not in fields and key not in sections:
            raise ConfigError(f"tune.space: {unknown_key(key, [*fields, *sections])}")
        if f"{key}.".startswith(FIXED_PREFIXES):
            raise ConfigError(f"{where}: {key.split('.')[0]} keys cannot be searched")
        if key in sections:
            out[key] = dist = _parse_section(where, key, spec, fields)
        else:
            out[key] = dist = _parse_one(where, spec, fields[key])
        for value in _edge_values(dist):
            try:
                base.override(to_dotted({key: value}))
            except ConfigError as e:
                raise ConfigError(f"{where}: value {shown(value)} is invalid ({e})") from None
    for key in out:
        bundled = [s for s in out if s in sections and key.startswith(f"{s}.") and key in columns({s: out[s]})]
        if bundled:
            raise ConfigError(f"tune.space {key}: searched twice, as a key and in the mappings of {bundled[0]}")
    return out


def _parse_section(where: str, section: str, spec: Any, fields: dict[str, type]) -> Dist:
    """A section key's distribution: mappings of that section's keys, picked (grid, choice) or constant."""
    picked = isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS
    if picked and next(iter(spec)) not in SECTION_KINDS:
        raise ConfigError(f"{where}: a section's values are mappings, picked with {' or '.join(SECTION_KINDS)}")
    kind, values = next(iter(spec.items())) if picked else ("const", [spec])
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} needs a non-empty list, got {shown(values)}")
    for value in values:
        if not isinstance(value, dict) or not value:
            raise ConfigError(f"{where}: expected non-empty mappings of {section} keys, got {shown(value)}")
        for k in value:
            if f"{section}.{k}" not in fields:
                raise ConfigError(f"{where}: {unknown_key(f'{section}.{k}', fields)}")
    return Dist(kind, tuple(values))


def columns(dists: dict[str, Dist]) -> list[str]:
    """The dotted keys a trial's searched values go under: each dotted key, and for a section key
    every key one of its mappings sets (in first-seen order)."""
    out: dict[str, None] = {}
    for key, d in dists.items():
        if "." in key:
            out[key] = None
        else:
            out |= {f"{key}.{k}": None for mapping in d.args for k in mapping}
    return list(out)


def to_dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides with each section key's mapping spelled out as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." not in key and isinstance(value, dict):
            out |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            out[key] = value
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
    """The trials' overrides, dotted (`columns(dists)`, every one set in every trial: a section key's
    mapping leaves the rest at `cfg`'s values): every grid combination times `num_samples` random draws,
    each validated as a whole config (a combination that no config allows is an error now)."""
    keys, base = columns(dists), flatten(cfg.to_dict())
    rng = random.Random(seed)
    grid_keys = [k for k, d in dists.items() if d.kind == "grid"]
    combos = list(itertools.product(*(dists[k].args for k in grid_keys))) or [()]
    trials = []
    for combo in combos:
        for _ in range(num_samples):
            overrides = {k: d.sample(rng) for k, d in dists.items() if d.kind != "grid"}
            overrides |= dict(zip(grid_keys, combo, strict=True))
            shown_overrides, dotted = overrides, to_dotted(overrides)
            overrides = {k: dotted[k] if k in dotted else base[k] for k in keys}
            try:
                cfg.override(overrides)
            except ConfigError as e:
                raise ConfigError(
                    f"tune.space: sampled trial {len(trials) + 1} {shown_overrides} is invalid ({e})"
                ) from None
            trials.append(overrides)
    return trials


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """`{"model": {"hidden": 32}}` -> `{"model.hidden": 32}` (one level: a config's sections)."""
    return {f"{s}.{k}": v for s, values in config.items() for k, v in values.items()}


def comparison(cfg: Config) -> dict[str, Any]:
    """The search space of a comparison (`jobs/compare.py`): every model of compare.variants (a grid of
    `model` mappings) times a grid of compare.seeds training seeds, 0 to seeds - 1."""
    return {
        "model": {"grid": list(cfg.compare.variants.values())},
        "train.seed": {"grid": list(range(cfg.compare.seeds))},
    }
