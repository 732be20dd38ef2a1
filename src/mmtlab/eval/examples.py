"""A picture of what a model retrieves: for captions across the rank distribution, the top-5 images
and the caption's own image framed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mmtlab.eval.retrieval import Embedded  # noqa: E402


def thumbnail(path) -> Image.Image:
    """What a figure shows for a record: the image, or for a video clip a strip of 4 of its frames."""
    from mmtlab.data.video import is_clip

    if is_clip(path):
        import numpy as np

        from mmtlab.data.formats.video import decode_mp4

        frames = decode_mp4(path)
        pick = np.linspace(0, len(frames) - 1, min(4, len(frames))).round().astype(int)
        return Image.fromarray(np.concatenate(list(frames[pick]), axis=1))
    with Image.open(path) as im:
        return im.convert("RGB")


def plot_text_to_image(emb: Embedded, records, out: str | Path, n_queries: int = 6, k: int = 5, seed: int = 0) -> Path:
    """Captions chosen across the distribution of their image's rank (best, median, worst ...,
    not a random few that may all be easy), each with its top-k images and, when the caption's own
    image is not among them, that image in a last column with its rank."""
    scores_all = emb.texts @ emb.images.T  # [n_texts, n_images]
    own = scores_all.gather(1, emb.text_to_image[:, None])
    ranks_all = (scores_all >= own).sum(1)  # ties counted against the model, as in recall_at_k
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ranks_all), generator=g)  # random among equal ranks
    by_rank = order[ranks_all[order].argsort(stable=True)]
    n = min(n_queries, len(by_rank))
    queries = [int(by_rank[round(i * (len(by_rank) - 1) / max(n - 1, 1))]) for i in range(n)]
    scores = scores_all[queries]
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    ranks = ranks_all[queries].tolist()
    cols = top.shape[1] + 1
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.9 * cols + 2.6, 2.0 * len(queries)), squeeze=False)
    for row, (q, hits) in enumerate(zip(queries, top.tolist(), strict=True)):
        target = int(emb.text_to_image[q])
        shown = hits + ([] if target in hits else [target])
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(shown):
                ax.axis("off")
                continue
            img_i = shown[col]
            ax.imshow(thumbnail(records[emb.record_index[img_i]].path), interpolation="nearest")
            hit = img_i == target
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if hit else "#bbbbbb")
                spine.set_linewidth(4 if hit else 1)
            title = f"#{col + 1}" if col < len(hits) else f"its image: #{ranks[row]}"
            ax.set_title(title + (" correct" if hit and col < len(hits) else ""), fontsize=8,
                         color="#1a9850" if hit else "black")  # fmt: skip
        axes[row][0].set_ylabel(
            "\n".join(textwrap.wrap(emb.captions[q], 28)[:5]) + f"\n(its image ranks #{ranks[row]})",
            rotation=0,
            ha="right",
            va="center",
            fontsize=8,
            labelpad=8,
        )
    fig.suptitle(
        f"Text-to-image retrieval: top-{k} images for captions from best to worst rank of their own image "
        "(green frame = the caption's image; last column: it, when not in the top)",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
