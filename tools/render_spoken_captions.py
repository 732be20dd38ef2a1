"""Render spoken emoji-scenes with espeak-ng: captions (for self-supervised speech pretraining) and
keyword utterances (20 sprite names x 4 voices x 2 speeds x 2 pitches, for the keyword-spotting
probe), 16 kHz, stored as 8-bit mu-law + xz.

    python tools/render_spoken_captions.py                       # the set shipped in the package
    python tools/render_spoken_captions.py --out data/emoji-scenes-speech --captions 3000

Without --out it rewrites src/mmtlab/data/speech/assets (60 captions + 320 keywords, about 4 MB;
commit the result). Captions come from the pretraining split of an emoji-scenes build (default
data/emoji-scenes, built if missing). If espeak-ng is not installed, this installs the Debian
package with apt-get (as root, or through sudo).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmtlab.data.speech import SHIPPED, build_spoken_set
from mmtlab.data.speech.render import espeak_path


def ensure_espeak() -> None:
    if espeak_path():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        sys.exit("espeak-ng is missing and there is no apt-get here; install espeak-ng with your package manager")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    if prefix and shutil.which("sudo") is None:
        sys.exit("espeak-ng is missing; run `apt-get install espeak-ng` as root")
    print("espeak-ng is missing: installing the Debian package", file=sys.stderr)
    subprocess.run([*prefix, apt, "update"], check=True)
    subprocess.run([*prefix, apt, "install", "-y", "--no-install-recommends", "espeak-ng"], check=True)
    if not espeak_path():
        sys.exit("apt-get finished but espeak-ng is still not on PATH")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=SHIPPED, help="spoken set directory (default: the shipped assets)")
    ap.add_argument("--captions", type=int, default=60, help="spoken captions to render")
    ap.add_argument("--data", type=Path, default=Path("data/emoji-scenes"), help="emoji-scenes build to read")
    ap.add_argument("--split", default="pretrain", help="split whose captions are spoken")
    ap.add_argument("--seed", type=int, default=0, help="seed of the voice / speed / pitch of each caption")
    ap.add_argument("--workers", type=int, default=2, help="espeak-ng processes at a time")
    args = ap.parse_args()

    ensure_espeak()
    annotations = sorted(args.data.glob("dataset_*.json"))
    if not annotations:
        from mmtlab.data.emoji_scenes import build_emoji_scenes

        print(f"building emoji-scenes into {args.data} first", file=sys.stderr)
        build_emoji_scenes(args.data)
        annotations = sorted(args.data.glob("dataset_*.json"))

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            print(f"\r{done}/{total} utterances", end="", file=sys.stderr)

    summary = build_spoken_set(
        args.out, annotations[0], split=args.split, captions=args.captions, seed=args.seed, workers=args.workers,
        progress=progress,
    )  # fmt: skip
    print(file=sys.stderr)
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir())}
    manifest = json.loads((args.out / "manifest.json").read_text())
    seconds = sum(u["samples"] for u in manifest["utterances"]) / manifest["sample_rate"]
    print(json.dumps({**summary, "seconds": round(seconds, 1), "bytes": sizes, "total_bytes": sum(sizes.values())}))


if __name__ == "__main__":
    main()
