"""Size against KL divergence, one point per recipe, the Pareto front joined (matplotlib, Agg backend)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_size_vs_kl(rows: list[dict[str, Any]], path: str | Path, *, title: str = "") -> None:
    """Write a PNG to `path`. Rows need recipe, lm_bytes, mmproj_bytes, kl_mean and pareto."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines or phones
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        xs = [(r["lm_bytes"] + r["mmproj_bytes"]) / 1e6 for r in rows]
        ys = [r["kl_mean"] for r in rows]
        front = [bool(r.get("pareto")) for r in rows]
        ax.scatter([x for x, f in zip(xs, front) if not f], [y for y, f in zip(ys, front) if not f],
                   color="tab:gray", label="dominated", zorder=3)
        ax.scatter([x for x, f in zip(xs, front) if f], [y for y, f in zip(ys, front) if f],
                   color="tab:red", label="Pareto front", zorder=4)
        pts = sorted((x, y) for x, y, f in zip(xs, ys, front) if f)
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red", linewidth=1, zorder=2)
        # neighbours in size often sit close together: alternate labels above and below their points
        for k, i in enumerate(sorted(range(len(rows)), key=lambda j: xs[j])):
            ax.annotate(rows[i]["recipe"], (xs[i], ys[i]), textcoords="offset points",
                        xytext=(4, 5 if k % 2 == 0 else -11), fontsize=8)
        positive = [y for y in ys if y > 0]
        if positive and max(positive) / min(positive) > 20:
            # KL spans decades (q8_0 ~1e-4, q3_k ~1e-1); symlog keeps an exact F16 (KL 0) on the plot
            ax.set_yscale("symlog", linthresh=min(positive) / 2)
        ax.set_xlabel("language model + mmproj size (MB)")
        ax.set_ylabel("mean KL divergence vs F16 (nats)")
        ax.set_title(f"Recipe size against fidelity{': ' + title if title else ''}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def plot_accuracy_by_kind(report: dict[str, Any], path: str | Path, *, title: str = "") -> None:
    """Grouped bars: held-out accuracy per question kind, one bar per runtime (PyTorch, each recipe).
    `report` is imp_gguf.tiny_imp.evaluate.accuracy_report's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runtimes = list(report["accuracy"])
    kinds = list(next(iter(report["by_kind"].values())))
    groups = kinds + ["all"]
    width = 0.8 / max(1, len(runtimes))
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    try:
        for j, rt in enumerate(runtimes):
            vals = [report["by_kind"][rt][k] for k in kinds] + [report["accuracy"][rt]]
            xs = [i + (j - (len(runtimes) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, vals, width, label=rt, zorder=3)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylim(0, 1.18)  # headroom for the legend above the bars
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel(f"held-out accuracy (n={report['n']}, exact answer)")
        ax.set_title(f"Held-out accuracy by question kind{': ' + title if title else ''}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3, zorder=0)
        ax.legend(fontsize=8, ncols=min(len(runtimes), 6), loc="upper center", frameon=False)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
