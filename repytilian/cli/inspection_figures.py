"""The figures of `repytilian inspect --png`: one matplotlib figure per view, written atomically.
None where matplotlib is not installed (`pip install 'repytilian[plot]'`)."""
from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.fileio import atomic_write_bytes

MAX_LABELLED = 48  # tokens labelled on an axis; beyond it the axis shows positions only


def draw(view: str, result: Any, out: Path, args: argparse.Namespace) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = {"attention": _attention, "lens": _lens, "embeddings": _embeddings, "surprise": _surprise}[view](plt, result)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _text(label: str) -> str:
    """A token as a figure shows it: escaped, and `$` not taken for matplotlib's mathematics."""
    return repr(label)[1:-1].replace("$", r"\$")


def _ticks(ax, tokens: list[str], axis: str) -> None:
    if len(tokens) > MAX_LABELLED:
        return
    shown = [_text(t) for t in tokens]
    if axis == "x":
        ax.set_xticks(range(len(tokens)), shown, fontsize=6, rotation=90)
    else:
        ax.set_yticks(range(len(tokens)), shown, fontsize=6)


def _attention(plt, result):
    layers, heads = result.weights.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(1.8 * heads + 1, 1.8 * layers + 0.6), dpi=120, squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(result.weights[layer, head], cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
    fig.suptitle("attention: row = the token looking, column = the token looked at", fontsize=9)
    fig.tight_layout()
    return fig


def _lens(plt, result):
    top = np.array([[position[0][1] for position in stage] for stage in result.top])  # (stages, T)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(result.tokens) + 2), 0.5 * len(result.stages) + 1.5), dpi=120)
    ax.imshow(top, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for s, stage in enumerate(result.top):
        for t, position in enumerate(stage):
            if len(result.tokens) <= MAX_LABELLED:
                ax.text(t, s, _text(position[0][0]), ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(result.stages)), result.stages, fontsize=7)
    _ticks(ax, result.tokens, "x")
    ax.set_title("the logit lens: the likeliest next token after each stage (shade: its probability)", fontsize=9)
    fig.tight_layout()
    return fig


def _embeddings(plt, result):
    fig, ax = plt.subplots(figsize=(7, 7), dpi=120)
    ax.scatter(result.tokens[:, 0], result.tokens[:, 1], s=4, alpha=0.4)
    for (x, y), label in list(zip(result.tokens, result.labels))[:400]:  # a large vocabulary: the first 400 named
        ax.annotate(_text(label), (x, y), fontsize=6)
    ax.set_xlabel(f"axis 1 ({result.explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"axis 2 ({result.explained[1]:.0%})")
    ax.set_title("token embeddings on their two main axes", fontsize=9)
    fig.tight_layout()
    return fig


def _surprise(plt, result):
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(result.bits) + 2), 3.5), dpi=120)
    ax.bar(range(1, len(result.tokens)), result.bits, color="tab:red")
    _ticks(ax, result.tokens, "x")
    ax.set_ylabel("surprise (bits)")
    ax.set_title(f"each token's surprise; {result.mean:.2f} bits on average", fontsize=9)
    fig.tight_layout()
    return fig
