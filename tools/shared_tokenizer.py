"""One WordPiece tokenizer for several data builds, for runs that must share a vocabulary across
them: a run started with `train.init_from` takes its parent's tokenizer, so an image run that a
video run will continue must already know the video text (else its words fall apart into pieces,
its questions run past model.text.max_len, and answers such as "0" become [UNK]).

    python tools/shared_tokenizer.py data/emoji-scenes-demo runs/data/video-2k --out runs/tok.json
    mmtlab train configs/runs/mammut.yaml --set tokenizer.path=runs/tok.json ...

Text: each build's training captions (`pretrain` for emoji-scenes, `train` for a video build) and
its VQA questions with their answers in the prompt format the VQA fine-tune trains on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmtlab.config.schema import DataConfig
from mmtlab.data.emoji_scenes.vqa import Question
from mmtlab.data.sources import load_split
from mmtlab.data.tokenizer import train_wordpiece
from mmtlab.data.video import is_video_root


def build_texts(root: Path) -> list[str]:
    split = "train" if is_video_root(root) else "pretrain"
    texts = []
    for r in load_split(DataConfig(root=str(root)), split):
        texts += [c for c in r.captions if c.strip()]
        texts += [Question(0, q["type"], q["question"], q["answer"]).text for q in r.extra.get("questions", [])]
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", type=Path, help="data builds (emoji-scenes or emoji-video)")
    ap.add_argument("--out", type=Path, required=True, help="tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args()
    texts = [t for root in args.roots for t in build_texts(root)]
    tok = train_wordpiece(texts, args.vocab_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"{args.out}: {tok.get_vocab_size()} tokens from {len(texts):,} texts of {len(args.roots)} builds")


if __name__ == "__main__":
    main()
