"""Validate an MNIST-format dataset and publish it, with a manifest, to a directory or s3:// prefix.

    python jobs/prepare_data.py ../shared/data/mnist s3://datasets/mnist --s3-endpoint http://minio:9000
    python jobs/train.py --data s3://datasets/mnist --s3-endpoint http://minio:9000

The four IDX files are checked (magic numbers, dimensions, counts, label range) and copied as they
are (gzipped IDX is already compact, and training reads the whole set into memory at once, so a
columnar copy would buy nothing); `manifest.json`, written last, holds the counts, shapes and
sha256 of each file. Training from that URI checks every file against it before parsing.
"""

import argparse

from lstmclf.cli import run_main
from lstmclf.paths import absolute_path


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and manifests with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="directory (or URI) holding the four IDX files; 'sample' = the bundled sample")
    p.add_argument("dest", help="where to publish them: local directory or s3://bucket/prefix")
    p.add_argument(
        "--s3-endpoint", default="", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL_S3, else AWS)"
    )
    p.add_argument("--num-classes", type=int, default=0, help="expected classes (default: max train label + 1)")
    p.add_argument("--force", action="store_true", help="replace another dataset already at dest")
    return p


def main() -> None:
    a = build_parser().parse_args()

    from lstmclf.data import prepare_dataset

    manifest, uploaded = prepare_dataset(
        a.src, absolute_path(a.dest, "dest"), endpoint=a.s3_endpoint, num_classes=a.num_classes, force=a.force
    )
    c = manifest["counts"]
    what = "published" if uploaded else "already up to date:"
    print(
        f"{what} {a.dest}: {c['train']} train / {c['test']} test images of {manifest['image_shape']}, "
        f"{manifest['num_classes']} classes, {len(manifest['files'])} files + manifest.json"
    )


if __name__ == "__main__":
    run_main(main)
