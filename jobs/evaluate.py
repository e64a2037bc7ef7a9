"""Evaluate a checkpoint on a test set: report.json, report.md and confusion_matrix.png.

python jobs/evaluate.py runs/train-.../epoch_0006 --out eval/
python jobs/evaluate.py CKPT --data ../shared/data/mnist       # another MNIST-format test set
"""

import argparse

from lstmclf.cli import run_main
from lstmclf.paths import output_dir


def build_parser() -> argparse.ArgumentParser:
    """This job's command line; tests parse the commands written in the README and manifests with it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory or checkpoint.pt (local path or URI)")
    p.add_argument("--data", help="dataset whose test files are used (default: the checkpoint's own data.path)")
    p.add_argument("--out", default="eval", help="output directory (default: ./eval)")
    p.add_argument(
        "--s3-endpoint",
        default="",
        help="S3-compatible endpoint URL for s3:// URIs (default: AWS_ENDPOINT_URL_S3, else AWS)",
    )
    return p


def main() -> None:
    a = build_parser().parse_args()
    out = output_dir(a.out, "--out")  # refused here, before any work, if it would be lost or is a file

    from lstmclf.evaluation import evaluate_checkpoint, write_report

    # Only the test files are read, their labels checked against the checkpoint's classes.
    report = evaluate_checkpoint(a.checkpoint, data=a.data or "", endpoint=a.s3_endpoint)
    paths = write_report(report, out)
    print(
        f"acc {report['acc']:.2%}  precision {report['precision']:.4f}  recall {report['recall']:.4f}  "
        f"f1 {report['f1']:.4f}  ({report['images']} test images)"
    )
    print("wrote " + ", ".join(str(x) for x in paths))


if __name__ == "__main__":
    run_main(main)
