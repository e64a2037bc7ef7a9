"""Model registry: register a checkpoint as an immutable version, list, show, promote the champion.

    python jobs/registry.py register runs/train-.../epoch_0006 --name mnist-lstm
    python jobs/registry.py list                       # models, their versions and champions
    python jobs/registry.py list mnist-lstm            # one line per version
    python jobs/registry.py show mnist-lstm 3          # config, metrics, source, sha256 of each file
    python jobs/registry.py promote mnist-lstm 3       # conditional: refused if another promotion got there first
    python jobs/registry.py rollback mnist-lstm        # the champion before the current one, back (conditional too)

The registry is ./registry unless --registry (or storage.registry in --config) says otherwise,
e.g. --registry s3://models/registry --s3-endpoint http://minio:9000.
"""

import argparse
import json

from lstmclf.cli import run_main
from lstmclf.paths import absolute_path


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and manifests with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or JSON config whose storage.registry / storage.s3_endpoint apply")
    p.add_argument("--registry", help="registry location: local directory or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL_S3, else AWS)")
    sub = p.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="copy a checkpoint into a new version")
    reg.add_argument("checkpoint", help="checkpoint directory (local path or URI)")
    reg.add_argument("--name", required=True, help="model name")
    reg.add_argument("--source", default="", help="experiment it came from (default: the checkpoint's run)")
    ls = sub.add_parser("list", help="models, or the versions of one model")
    ls.add_argument("name", nargs="?")
    show = sub.add_parser("show", help="one version's manifest as JSON")
    show.add_argument("name")
    show.add_argument("version", nargs="?", default="champion", help="number or 'champion' (default)")
    pro = sub.add_parser("promote", help="make a version the champion")
    pro.add_argument("name")
    pro.add_argument("version")
    back = sub.add_parser("rollback", help="put the previous champion back")
    back.add_argument("name")
    return p


def main() -> None:
    a = build_parser().parse_args()

    from lstmclf.config import load_config
    from lstmclf.errors import RegistryError
    from lstmclf.registry import Registry

    st = (
        load_config(a.config)
        .override(
            {
                k: v
                for k, v in {"storage.registry": a.registry, "storage.s3_endpoint": a.s3_endpoint}.items()
                if v is not None
            }
        )
        .storage
    )
    r = Registry(absolute_path(st.registry, "storage.registry"), st.s3_endpoint)
    if a.command == "register":
        v = r.register(a.checkpoint, a.name, source=a.source)
        print(f"registered {a.checkpoint} as {a.name} version {v} in {st.registry}")
    elif a.command == "list" and a.name is None:
        names = r.names()
        if not names:
            print(f"no models in {st.registry}")
        for name in names:
            champ = r.champion(name)
            print(
                f"{name}: versions {', '.join(map(str, r.versions(name)))}; "
                f"champion {'version ' + str(champ[0]) if champ else 'none'}"
            )
    elif a.command == "list":
        champ = r.champion(a.name)
        versions = r.versions(a.name)
        if not versions:
            raise RegistryError(
                f"registry {st.registry} has no model {a.name} (models: {', '.join(r.names()) or 'none'})"
            )
        for v in versions:
            m = r.show(a.name, v)
            acc = m["metrics"].get("val_acc")
            mark = "  (champion)" if champ and champ[0] == v else ""
            print(
                f"{a.name} v{v}  val_acc {'-' if acc is None else f'{acc:.4f}'}  epoch {m['metrics'].get('epoch')}  "
                f"registered {m['created']}  from {m['source']['checkpoint']}{mark}"
            )
    elif a.command == "show":
        print(json.dumps(r.show(a.name, a.version), indent=2))
    elif a.command == "promote":
        before = r.champion(a.name)
        v, _ = r.promote(a.name, a.version, expected=before[1] if before else None)
        print(f"{a.name}: champion is now version {v} (was {'version ' + str(before[0]) if before else 'none'})")
    else:
        v, was = r.rollback(a.name)
        print(f"{a.name}: champion is now version {v} (rolled back from version {was})")


if __name__ == "__main__":
    run_main(main)
