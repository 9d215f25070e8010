"""A PNG comparing several benched models/recipes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imp_gguf.speed.protocols import PAPER_ROW


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_rows(rows: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Three panels: decode tok/s (with roofline ceiling and the paper's 12.73), prompt tok/s, T_VE s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.get("model_filename", "?").removesuffix(".gguf") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(max(9, 2.2 * len(rows) + 5), 4.2))
    x = list(range(len(rows)))
    panels = [
        ("decode tok/s", "decode_tps", PAPER_ROW["decode_tps"]),
        ("prompt tok/s", "prompt_tps", PAPER_ROW["prompt_tps"]),
        ("image encode s", "vision_encode_ms", PAPER_ROW["vision_encode_s"]),
    ]
    for ax, (label, key, paper) in zip(axes, panels):
        vals = [(r.get(key) or 0) / (1000.0 if key == "vision_encode_ms" else 1.0) for r in rows]
        lo = [(r[f"{key}_min"] if r.get(f"{key}_min") is not None else r.get(key) or 0) for r in rows]
        hi = [(r[f"{key}_max"] if r.get(f"{key}_max") is not None else r.get(key) or 0) for r in rows]
        if key == "vision_encode_ms":
            lo, hi = [v / 1000 for v in lo], [v / 1000 for v in hi]
        err = [[max(0.0, v - a) for v, a in zip(vals, lo)], [max(0.0, b - v) for v, b in zip(vals, hi)]]
        ax.bar(x, vals, yerr=err, color="#4c72b0", capsize=3)
        ax.axhline(paper, color="#c44e52", ls="--", lw=1, label="paper (SD 8 Gen 3)")
        if key == "decode_tps":
            ceil = [r.get("ceiling_tps") for r in rows]
            if any(c for c in ceil):
                ax.scatter(x, [c or 0 for c in ceil], marker="_", s=400, color="black", label="bandwidth ceiling")
        ax.set_title(label)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    dev = rows[0].get("device", "") if rows else ""
    fig.suptitle(title or f"imp-gguf bench on {dev}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
