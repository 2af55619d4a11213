"""Training curves (reward, KL, entropy per step) from an engine's Parquet log."""
from __future__ import annotations

from ..io_atomic import atomic_path


def plot_curves(train_log: str, target: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    t = pq.read_table(train_log).to_pydict()
    steps = t["step"]
    panels = [("reward", [c for c in t if c.startswith("reward") and not c.endswith("_std")]),
              ("KL", [c for c in t if c == "kl"]), ("entropy", [c for c in t if c == "entropy"])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3), dpi=110)
    for ax, (name, cols) in zip(axes, panels):
        for c in cols:
            ax.plot(steps, t[c], marker="o", markersize=3, label=c)
        ax.set_title(name)
        ax.set_xlabel("step")
        if len(cols) > 1:
            ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
