"""The commands the README, cluster.yaml and the manifests write (`python jobs/<name>.py ...`), found and
checked with the job's own parser and config validation, so that no stale flag ships."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = re.compile(r"(?:\S*/)?jobs/(\w+)\.py")
PYTHON = re.compile(r"(?:.*/)?python3?")
SEPARATORS = {"&&", "||", "|", ";", "&"}
ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Z][A-Z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Command:
    source: str  # where it is written, for test ids and messages
    job: str  # jobs/<job>.py
    args: tuple[str, ...]
    text: str  # the shell line it came from


def expand(text: str, variables: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by their values, as the shell does (unquoted, so split later)."""
    for name, value in variables.items():
        text = re.sub(rf"\$(?:{name}\b|\{{{name}\}})", lambda _, v=value: v, text)
    return text


def in_shell(text: str, source: str) -> list[Command]:
    """The job commands in one shell line."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as e:  # unbalanced quotes: no shell would run it either
        if SCRIPT.search(text):
            raise AssertionError(f"{source}: `{text.strip()}`: {e}") from None
        return []
    found = []
    for i, token in enumerate(tokens):
        m = SCRIPT.fullmatch(token)
        if m and i > 0 and PYTHON.fullmatch(tokens[i - 1]):
            args = []
            for t in tokens[i + 1 :]:
                if t in SEPARATORS:
                    break
                args.append(t.removesuffix(";"))
                if t.endswith(";"):
                    break
            found.append(Command(source, m.group(1), tuple(args), text))
    return found


def in_markdown(path: Path) -> list[Command]:
    """The job commands in a Markdown file's fenced shell blocks (lines joined at `\\`, variables
    assigned earlier in the file expanded: a reader runs the blocks in one shell, in order)."""
    commands: list[Command] = []
    variables: dict[str, str] = {}
    block: list[str] | None = None  # the lines of the open shell block
    other = False  # inside a fenced block of something else
    for line in path.read_text().splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if block is not None:
                commands += _shell_block(block, path.name, variables)
                block = None
            elif other:
                other = False
            elif fence in ("```bash", "```sh", "```shell"):
                block = []
            else:
                other = True
        elif block is not None:
            block.append(line)
    return commands


def _shell_block(lines: list[str], source: str, variables: dict[str, str]) -> list[Command]:
    commands = []
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        line = expand(line, variables)
        m = ASSIGNMENT.match(line.strip())
        if m:  # NAME="one word or a quoted string": remembered for the lines below
            with contextlib.suppress(ValueError):
                value = shlex.split(m.group(2), comments=True)
                if len(value) == 1:
                    variables[m.group(1)] = value[0]
                    continue
        commands += in_shell(line, source)
    return commands


def in_strings(node: object, source: str) -> list[Command]:
    """The job commands in every string of a parsed YAML document (shell lines, entrypoints) and in
    every list of strings that is one command (a container's `command`, one argument an item)."""
    if isinstance(node, str):
        return [c for line in node.splitlines() for c in in_shell(line, source)]
    if isinstance(node, dict):
        return [c for v in node.values() for c in in_strings(v, source)]
    if isinstance(node, list):
        found = in_argv(node, source) if all(isinstance(v, str) for v in node) else []
        return found + [c for v in node for c in in_strings(v, source)]
    return []


def in_argv(argv: list[str], source: str) -> list[Command]:
    """The job command in an argument vector (`[..., "python", "/x/jobs/retrain.py", "--slot", "$(SLOT)"]`):
    everything after the script is its arguments, as exec passes them."""
    for i, token in enumerate(argv):
        m = SCRIPT.fullmatch(token)
        if m and i > 0 and PYTHON.fullmatch(argv[i - 1]):
            return [Command(source, m.group(1), tuple(argv[i + 1 :]), shlex.join(argv))]
    return []


@cache
def job_module(job: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"lstmclf_job_{job}", ROOT / "jobs" / f"{job}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(command: Command) -> argparse.Namespace:
    """The job's own parser applied to the command's arguments; an AssertionError with argparse's
    message where it refuses them."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return job_module(command.job).build_parser().parse_args(list(command.args))
    except SystemExit:
        raise AssertionError(f"{command.source}: `{command.text.strip()}`: {err.getvalue().strip()}") from None


def validate(command: Command, config_files: dict[str, Path] | None = None) -> argparse.Namespace:
    """Parse the command and build its config as the job's main() does (train, tune, retrain, compare; registry
    reads --config), which validates every value. A --config file is read from `config_files` (container
    paths: a mounted ConfigMap's local copy) or from the repository; a relative path that is in
    neither stands for a file of the user's (`recipe.yaml`) and is left out; an absolute one fails."""
    from lstmclf.cli import config_from_args
    from lstmclf.config import load_config

    a = parse(command)
    config = getattr(a, "config", None)
    if config:
        local = (config_files or {}).get(config) or ROOT / config
        if not local.is_file() and Path(config).is_absolute():
            raise AssertionError(f"{command.source}: `{command.text.strip()}`: --config {config} is no file we know")
        a.config = str(local) if local.is_file() else None
    if command.job == "train":
        config_from_args(a, prefix="train")
    elif command.job == "tune":  # as jobs/tune.py's main() builds it
        for key, flag in (("tune.num_samples", a.num_samples), ("tune.search", a.search)):
            if flag is not None:
                a.set.append(f"{key}={flag}")
        module = job_module("tune")
        config_from_args(a, prefix="tune", preset=module.SMOKE if a.smoke else None, pick_name=not a.resume)
    elif command.job == "retrain":  # its own build_config: config, slot and recipe changes, all checked
        for attr in ("slot", "registry", "test_data"):  # Kubernetes' $(VAR) stands for a value set at run time
            if getattr(a, attr):
                setattr(a, attr, re.sub(r"\$\((\w+)\)", lambda m: f"{m.group(1).lower()}-value", getattr(a, attr)))
        job_module("retrain").build_config(a)
    elif command.job == "compare":  # its own build_config: seeds, alpha and every variant checked
        job_module("compare").build_config(a)
    elif command.job == "registry" and a.config:
        load_config(a.config)
    return a
