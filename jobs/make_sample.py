"""Rebuild the MNIST sample bundled in lstmclf/data/sample from the full dataset.

python jobs/make_sample.py --src ../shared/data/mnist
"""

import argparse

from lstmclf.cli import run_main
from lstmclf.data.dataset import sample_dir
from lstmclf.data.sample import make_sample


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and manifests with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="directory or URI holding the four MNIST IDX files")
    p.add_argument("--dst", default=sample_dir(), help="output directory (default: the package's sample)")
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    return p


def main() -> None:
    a = build_parser().parse_args()
    counts = make_sample(a.src, a.dst, a.train, a.test, a.seed)
    print(f"wrote {counts['train']} train and {counts['test']} test images to {a.dst}")


if __name__ == "__main__":
    run_main(main)
