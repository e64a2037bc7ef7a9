"""A checkpoint and a test set in; accuracy, macro and per-class scores and the confusion matrix out."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstmclf.checkpoint import load_checkpoint, model_from_checkpoint
from lstmclf.data import BatchLoader, Split, load_test, to_tensors
from lstmclf.engine import evaluate, place_model
from lstmclf.errors import DataError


def evaluate_checkpoint(
    uri: str,
    test: Split | None = None,
    *,
    data: str = "",
    device: torch.device | None = None,
    batch_size: int = 1024,
    endpoint: str = "",
) -> dict[str, Any]:
    """Metrics of a checkpoint on a test split (default: the test files of `data`, else of the
    checkpoint's own dataset; only those two files are read), with the checkpoint's own
    normalisation; `endpoint`: the S3 endpoint of s3:// URIs."""
    state = load_checkpoint(uri, endpoint)
    if test is None:
        _, cfg = model_from_checkpoint(state)  # its config, checked, names the dataset
        test = load_test(data or cfg.data.path, num_classes=state["data"]["num_classes"], endpoint=endpoint)
    return {"checkpoint": uri, **evaluate_state(state, test, device=device, batch_size=batch_size)}


def evaluate_state(
    state: dict[str, Any],
    test: Split,
    *,
    device: torch.device | None = None,
    batch_size: int = 1024,
    predictions: list[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Metrics of a loaded checkpoint (`lstmclf.checkpoint.load_checkpoint`, `Registry.load`) on a test
    split; `predictions` as `lstmclf.engine.evaluate` takes it (in the split's order)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = model_from_checkpoint(state)
    info = state["data"]
    if [1, *test.images.shape[1:]] != list(info["image_shape"]):
        raise DataError(
            f"test images are {list(test.images.shape[1:])}, the checkpoint's model takes {info['image_shape'][1:]}"
        )
    if int(test.labels.max()) >= info["num_classes"]:
        raise DataError(f"test labels reach {int(test.labels.max())}, the checkpoint has {info['num_classes']} classes")
    loader = BatchLoader(*to_tensors(test, device), batch_size, mean=info["mean"], std=info["std"])
    report = evaluate(
        place_model(model, device), loader, info["num_classes"], device=device, detailed=True, predictions=predictions
    )
    return {
        "epoch": state["epoch"] + 1,
        "images": len(test),
        "num_classes": info["num_classes"],
        "model": dataclasses.asdict(cfg.model),
        **report,
    }


def predict(state: dict[str, Any], test: Split, **kwargs: Any) -> tuple[dict[str, Any], np.ndarray]:
    """`evaluate_state`'s report and the predicted class of every test image, in order."""
    predictions: list[torch.Tensor] = []
    report = evaluate_state(state, test, predictions=predictions, **kwargs)
    return report, torch.cat(predictions).numpy()


def markdown(report: dict[str, Any]) -> str:
    """Summary, per-class table and confusion matrix as Markdown."""
    n = report["num_classes"]
    lines = [
        f"# Evaluation of `{report['checkpoint']}`",
        "",
        f"{report['images']} test images, {n} classes, checkpoint epoch {report['epoch']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {k} | {report[k]:.4f} |" for k in ("acc", "precision", "recall", "f1", "loss")),
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    support = [sum(row) for row in report["confusion"]]
    for c in range(n):
        lines.append(
            f"| {c} | {report['precision_per_class'][c]:.4f} | {report['recall_per_class'][c]:.4f} | "
            f"{report['f1_per_class'][c]:.4f} | {support[c]} |"
        )
    lines += [
        "",
        "## Confusion matrix (rows: true class, columns: predicted)",
        "",
        "| | " + " | ".join(str(c) for c in range(n)) + " |",
        "|---" * (n + 1) + "|",
    ]
    lines += [f"| **{r}** | " + " | ".join(str(v) for v in row) + " |" for r, row in enumerate(report["confusion"])]
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = torch.tensor(report["confusion"], dtype=torch.float64)
    norm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)  # row-normalised: recall on the diagonal
    n = len(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.6 + 0.55 * n), dpi=120)
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report['acc']:.2%}, macro F1 {report['f1']:.4f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """report.json, report.md and (with matplotlib installed) confusion_matrix.png under out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    written[0].write_text(json.dumps(report, indent=2))
    written[1].write_text(markdown(report))
    try:
        plot_confusion(report, out / "confusion_matrix.png")
        written.append(out / "confusion_matrix.png")
    except ImportError:
        pass  # the [plot] extra is not installed: JSON and Markdown are still complete
    return written


HEADLINE = ("acc", "precision", "recall", "f1", "loss")


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The summary metrics of a report (what summary.json files keep)."""
    return {k: report[k] for k in HEADLINE}


def test_line(report: dict[str, Any]) -> str:
    """One line for a job's final summary."""
    return (
        f"test ({report['images']} images): acc {report['acc']:.2%}  precision {report['precision']:.4f}  "
        f"recall {report['recall']:.4f}  f1 {report['f1']:.4f}"
    )
