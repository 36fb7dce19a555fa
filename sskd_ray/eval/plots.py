"""PNG figures for people: training curves of one stage, and all stages side by side."""
from __future__ import annotations

from pathlib import Path

from sskd_ray import storage

TERMS = ("loss", "loss_sup", "loss_pl", "loss_con")
COLOURS = {"loss": "#222222", "loss_sup": "#4c72b0", "loss_pl": "#dd8452", "loss_con": "#55a868"}


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend (no display on workers or CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in history if key in r and r[key] is not None]
    return [r["iteration"] for r in rows], [r[key] for r in rows]


def _draw_losses(ax, history: list[dict], title: str) -> None:
    drawn = False
    for key in TERMS:
        xs, ys = _series(history, key)
        if ys and any(y != 0 for y in ys):
            ax.plot(xs, ys, label=key.replace("loss_", "L_").replace("loss", "total"), color=COLOURS[key],
                    lw=1.2 if key == "loss" else 1.6, ls="--" if key == "loss" else "-", zorder=3 if key == "loss" else 2)
            drawn = True
    for row in history:
        if row.get("event") == "resumed":
            ax.axvline(row["iteration"], color="#c44e52", ls="--", lw=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)


def save_figure(fig, path: str | Path) -> str:
    """Write a matplotlib figure (PNG) to a local path or a URI and close it."""
    import matplotlib.pyplot as plt

    with storage.local_output(path) as local:
        fig.savefig(local)
    plt.close(fig)
    return storage.normalize(path)


def plot_history(history: list[dict], path: str | Path, title: str = "") -> str:
    """Loss terms over iterations (left) and periodic val mask AP (right); resumes as red dashes."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=120)
    _draw_losses(left, history, f"{title}: training losses")
    xs, ys = _series(history, "mask_AP")
    right.plot(xs, ys, "o-", color="#4c72b0", label="mask AP")
    xs50, ys50 = _series(history, "mask_AP50")
    right.plot(xs50, ys50, "s--", color="#8172b3", label="mask AP50")
    last = max([r["iteration"] for r in history] or [1])
    right.set_xlim(0, last * 1.05)
    right.set_ylim(0, max(ys50 + ys + [1.0]) * 1.25)
    if len(xs) == 1:  # evaluated only at the end: say the numbers rather than draw a lone point
        right.annotate(f"AP {ys[0]:.1f} / AP50 {ys50[0]:.1f}", (xs[0], ys50[0]), textcoords="offset points",
                       xytext=(-10, 8), ha="right", fontsize=9)
    right.set_title(f"{title}: val mask AP", fontsize=10)
    right.set_xlabel("iteration")
    right.set_ylabel("AP (%)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_stages(histories: dict[str, list[dict]], path: str | Path) -> str:
    """One loss panel per stage, in pipeline order."""
    plt = pyplot()
    names = [n for n, h in histories.items() if h]
    cols = min(3, max(1, len(names)))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=120, squeeze=False)
    for ax, name in zip(axes.flat, names):
        _draw_losses(ax, histories[name], name)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
