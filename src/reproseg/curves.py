"""Training curves from an engine's Parquet log: one panel per reward term, the total
reward, KL, entropy, completion length, the clipped-token fraction and the share of
prompt groups with zero reward std (no GRPO signal), per optimizer step.

A panel whose curves hold no finite value says why in the panel instead of showing
empty axes: TRL computes no KL when beta is 0, and no ratio clipping is logged by a loss
without one. Rollout columns (rewards, lengths, zero-std) are logged only on the first
optimizer step of each rollout batch, so each curve is drawn through its finite points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib
import matplotlib.pyplot as plt
import pyarrow.parquet as pq
from matplotlib.ticker import MaxNLocator

from .io_atomic import atomic_path

_TERM_PREFIX, _TERM_SUFFIX = "reward_", "_mean"


@dataclass
class Panel:
    title: str
    ylabel: str
    columns: list[str]                 # log columns drawn, in legend order
    labels: list[str] = field(default_factory=list)
    empty_note: str = ""               # shown when none of the columns has a finite value
    note: str | None = None            # set by plot_curves: the note shown, or None


def _panels(columns: list[str]) -> list[Panel]:
    terms = [c[len(_TERM_PREFIX):-len(_TERM_SUFFIX)] for c in columns
             if c.startswith(_TERM_PREFIX) and c.endswith(_TERM_SUFFIX) and c != "reward_mean"]
    panels = [Panel("total reward", "reward (weighted sum of terms)", ["reward_mean"], ["mean"],
                    "no reward logged")]
    panels += [Panel(f"reward term: {t}", "term score (mean over completions)", [f"reward_{t}_mean"], [t],
                     f"term {t} has no finite value (not applicable to any completion)") for t in terms]
    panels += [
        Panel("KL to the reference policy", "KL (nats / token)", ["kl"], ["kl"],
              "no KL logged: TRL computes it only when beta > 0"),
        Panel("policy entropy", "entropy (nats / token)", ["entropy"], ["entropy"], "no entropy logged"),
        Panel("completion length", "length (tokens)", ["completion_length_mean"], ["mean"],
              "no completion length logged"),
        Panel("ratio-clipped tokens", "fraction of completion tokens",
              ["clip_ratio", "clip_ratio_low", "clip_ratio_high"], ["low or high", "low", "high"],
              "no clipping logged (a loss without a ratio clip)"),
        Panel("groups with zero reward std", "fraction of prompt groups", ["frac_zero_std"], ["zero std"],
              "no zero-std fraction logged"),
    ]
    return panels


def _sft_panels(columns: list[str]) -> list[Panel]:
    """A supervised stage's log: its loss (and loss parts), the batch mask IoU where logged
    (SegAnswer stage 1), learning rate, gradient norm."""
    parts = [c for c in ("focal", "dice") if c in columns]
    panels = [Panel("training loss", "loss (mean per target token or mask)", ["loss"], ["loss"], "no loss logged")]
    if parts:
        panels.append(Panel("loss parts", "loss (unweighted)", parts, parts, "no loss parts logged"))
    if "mask_iou" in columns:
        # NaN on a step whose batch had no target with an object.
        panels.append(Panel("mask IoU on the training batch", "IoU (batch mean)", ["mask_iou"], ["mask IoU"],
                            "no batch had a target mask with an object"))
    return panels + [
        Panel("learning rate", "learning rate", ["learning_rate"], ["lr"], "no learning rate logged"),
        Panel("gradient norm", "norm (before clipping)", ["grad_norm"], ["grad norm"], "no gradient norm logged"),
    ]


PANELS = {"grpo": _panels, "sft": _sft_panels}


def _finite_points(steps, values) -> tuple[list, list]:
    pts = [(s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(train_log: str, target: str, title: str, kind: str = "grpo") -> list[Panel]:
    """Writes the curves of `train_log` to the PNG `target`; returns the panels drawn (with
    their notes). kind: "grpo" (an engine log) or "sft" (a supervised stage's loss log)."""
    matplotlib.use("Agg")

    t = pq.read_table(train_log).to_pydict()
    steps = t["step"]
    panels = PANELS[kind](list(t))
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), dpi=110, squeeze=False)
    flat = axes.ravel()
    for ax, panel in zip(flat, panels):
        drawn = 0
        for col, label in zip(panel.columns, panel.labels):
            xs, ys = _finite_points(steps, t.get(col, []))
            if xs:
                ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1, label=label)
                drawn += 1
        if not drawn:
            panel.note = panel.empty_note
            ax.text(0.5, 0.5, panel.note, transform=ax.transAxes, ha="center", va="center", wrap=True,
                    fontsize=7, color="0.35")
            ax.set_yticks([])
        elif drawn > 1:
            ax.legend(fontsize=6)
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel(panel.ylabel, fontsize=7)
        ax.tick_params(labelsize=7)
        if steps:  # the same step range in every panel, also where a column has gaps
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Plain numbers: an offset ("+1e-3" above the axis) or a scientific multiplier
        # makes small reward changes unreadable.
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return panels
