"""A picture of what a model retrieves: for a few captions, the top-5 images, correct one framed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mmtlab.eval.retrieval import Embedded  # noqa: E402


def plot_text_to_image(emb: Embedded, records, out: str | Path, n_queries: int = 6, k: int = 5, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    queries = torch.randperm(len(emb.captions), generator=g)[:n_queries].tolist()
    scores = emb.texts[queries] @ emb.images.T  # [q, n_images]
    top = scores.topk(k, dim=1).indices
    targets = emb.text_to_image[queries]
    # Rank of the caption's own image, ties counted against the model as in recall_at_k.
    ranks = (scores >= scores.gather(1, targets[:, None])).sum(1).tolist()
    fig, axes = plt.subplots(len(queries), k, figsize=(1.9 * k + 2.6, 2.0 * len(queries)), squeeze=False)
    for row, (q, hits) in enumerate(zip(queries, top.tolist(), strict=True)):
        target = int(emb.text_to_image[q])
        for col, img_i in enumerate(hits):
            ax = axes[row][col]
            with Image.open(records[emb.record_index[img_i]].path) as im:
                ax.imshow(im.convert("RGB"), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            hit = img_i == target
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if hit else "#bbbbbb")
                spine.set_linewidth(4 if hit else 1)
            ax.set_title(f"#{col + 1}" + (" correct" if hit else ""), fontsize=8, color="#1a9850" if hit else "black")
        axes[row][0].set_ylabel(
            "\n".join(textwrap.wrap(emb.captions[q], 28)[:5]) + f"\n(its image ranks #{ranks[row]})",
            rotation=0,
            ha="right",
            va="center",
            fontsize=8,
            labelpad=8,
        )
    fig.suptitle("Text-to-image retrieval: top-5 images per caption (green frame = the caption's image)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
