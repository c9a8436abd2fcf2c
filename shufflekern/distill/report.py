"""Run outputs: atomic file writes, metrics.json / metrics.csv / curves.png."""
import csv
import io
import json
import os
import tempfile

import torch

__all__ = ["atomic_write_bytes", "atomic_torch_save", "write_metrics", "HISTORY_FIELDS"]

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "images_per_s")


def atomic_write_bytes(path, data: bytes):
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file,
    and a run killed mid-write leaves the previous version intact."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _curves_png(history):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], "s-", label="val (CE)")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(ep, [h["val_acc"] for h in history], "o-", color="C2")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("val top-1 (%)"), ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_metrics(out_dir, metrics, plot=True):
    """OUT/metrics.json (the whole dict), OUT/metrics.csv (the history), OUT/curves.png."""
    atomic_write_bytes(os.path.join(out_dir, "metrics.json"),
                       (json.dumps(metrics, indent=2, sort_keys=False) + "\n").encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(metrics["history"])
    atomic_write_bytes(os.path.join(out_dir, "metrics.csv"), buf.getvalue().encode())
    if plot and metrics["history"]:
        atomic_write_bytes(os.path.join(out_dir, "curves.png"), _curves_png(metrics["history"]))
