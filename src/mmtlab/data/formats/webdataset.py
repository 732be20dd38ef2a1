"""WebDataset tar shards: writing (deterministic bytes) and a reader that skips and counts bad data.

A shard is a plain tar; a sample is the run of consecutive members sharing a key (the file name up
to its first dot): `val_0000042.png`, `val_0000042.txt`, `val_0000042.json`. The files written here
are readable by the `webdataset` package; the reader is our own (stdlib `tarfile`) because it must
keep going past damage that would otherwise end an epoch:

- a sample whose image does not decode, that has no image, no caption or unreadable JSON is skipped
  and counted;
- a truncated shard (cut inside a member, or missing the end-of-archive blocks) yields the samples
  before the damage, is counted, and reading continues with the next shard.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from braceexpand import braceexpand
from PIL import Image

from mmtlab.config import ConfigError

MAX_SHARDS = 1_000_000

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
MAX_LOGGED_ERRORS = 50


@dataclass
class ShardStats:
    """What a reader saw; pass one in to keep the counts, or read `reader.stats`."""

    shards: int = 0
    shards_truncated: int = 0
    shards_unreadable: int = 0
    samples: int = 0  # yielded
    corrupt_images: int = 0
    missing_images: int = 0
    missing_captions: int = 0
    bad_json: int = 0
    errors: list[str] = field(default_factory=list)  # the first MAX_LOGGED_ERRORS messages

    @property
    def skipped(self) -> int:
        return self.corrupt_images + self.missing_images + self.missing_captions + self.bad_json

    def log(self, message: str) -> None:
        if len(self.errors) < MAX_LOGGED_ERRORS:
            self.errors.append(message)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {"skipped": self.skipped}


# ------------------------------------------------------------------------------------------ writing


class ShardWriter:
    """Writes samples into `{prefix}-{n:06d}.tar`, `shard_size` samples per shard.

    Member headers carry no timestamps or owners, so the same samples always give the same bytes.
    """

    def __init__(self, out_dir: str | Path, prefix: str, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.shard_size = shard_size
        self.paths: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def write(self, key: str, members: dict[str, bytes | str]) -> None:
        """One sample: `members` maps extension ("png", "txt", "json") to content."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if self._tar is None or self._in_shard == self.shard_size:
            self._next_shard()
        assert self._tar is not None
        for ext, data in members.items():
            payload = data.encode("utf-8") if isinstance(data, str) else data
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(payload)
            info.mtime = 0
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(payload))
        self._in_shard += 1

    def _next_shard(self) -> None:
        self.close()
        path = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (open across writes)
        self.paths.append(path)
        self._in_shard = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_shards(
    out_dir: str | Path, prefix: str, samples: Iterable[tuple[str, dict[str, bytes | str]]], shard_size: int
) -> list[Path]:
    """Write (key, members) samples into shards; returns the shard paths."""
    with ShardWriter(out_dir, prefix, shard_size) as writer:
        for key, members in samples:
            writer.write(key, members)
    return writer.paths


# ------------------------------------------------------------------------------------------ reading


def _pattern_size(pattern: str) -> int:
    """How many names a brace pattern expands to (an upper bound for nested braces)."""
    if "::" in pattern:
        return pattern.count("::") + 1
    n = 1
    for body in re.findall(r"\{([^{}]*)\}", pattern):
        m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?", body)
        if m:
            lo, hi, step = int(m.group(1)), int(m.group(2)), abs(int(m.group(3) or 1)) or 1
            n *= abs(hi - lo) // step + 1
        else:
            n *= body.count(",") + 1
    return n


def expand_urls(urls_or_pattern: str | Path | Sequence[str | Path]) -> list[str]:
    """A brace pattern ("shards/train-{000000..000009}.tar"), a path, or a list of either."""
    items = [urls_or_pattern] if isinstance(urls_or_pattern, (str, Path)) else list(urls_or_pattern)
    out: list[str] = []
    for item in items:
        s = str(item)
        # at most MAX_SHARDS: a typo such as {0..999999999} must not allocate a billion names
        # (braceexpand builds its lists whole, so the size is computed from the pattern first)
        if len(out) + _pattern_size(s) > MAX_SHARDS:
            raise ConfigError(f"data.shards: {s!r} expands to more than {MAX_SHARDS:,} shards")
        out.extend(s.split("::") if "::" in s else braceexpand(s))
    return [u[len("file:") :] if u.startswith("file:") else u for u in out]


class ShardReader:
    """Iterates samples {key, image, captions, meta, url} over shards, skipping and counting bad ones.

    `image` is a PIL RGB image (or the raw bytes with decode=False); `captions` comes from the JSON's
    "captions" list, else the .txt member; `meta` is the decoded JSON ({} if there is none).
    """

    def __init__(
        self,
        urls_or_pattern: str | Path | Sequence[str | Path],
        *,
        decode: bool = True,
        stats: ShardStats | None = None,
    ) -> None:
        self.urls = expand_urls(urls_or_pattern)
        self.decode = decode
        self.stats = stats if stats is not None else ShardStats()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for url in self.urls:
            self.stats.shards += 1
            for key, members in self._groups(url):
                sample = self._sample(url, key, members)
                if sample is not None:
                    self.stats.samples += 1
                    yield sample

    def _groups(self, url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, {ext: bytes}) for each complete sample of one shard."""
        try:
            size = os.path.getsize(url)
            tar = tarfile.open(url, "r:")  # noqa: SIM115 (closed by the `with tar` below)
        except (OSError, tarfile.TarError) as e:
            self.stats.shards_unreadable += 1
            self.stats.log(f"{url}: cannot open ({e})")
            return
        key: str | None = None
        members: dict[str, bytes] = {}
        try:
            with tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    base = info.name.rsplit("/", 1)[-1]
                    k, _, ext = base.partition(".")
                    if k != key:  # a new key: the previous sample is complete
                        if key is not None:
                            yield key, members
                        key, members = k, {}
                    members[ext.lower()] = tar.extractfile(info).read()  # ReadError if cut in the data
                # tarfile treats a file cut between members as a normal end; a complete archive ends
                # with two zero blocks after the last member, so their absence means truncation.
                if size - tar.offset < 2 * tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("missing end-of-archive blocks")
        except (tarfile.TarError, EOFError, OSError) as e:
            # The sample being read when the damage hit may be incomplete: drop it with the rest.
            self.stats.shards_truncated += 1
            self.stats.log(f"{url}: truncated or damaged after {tar.offset} bytes ({e}); rest of shard skipped")
            return
        if key is not None:
            yield key, members

    def _sample(self, url: str, key: str, members: dict[str, bytes]) -> dict[str, Any] | None:
        head = self._meta_and_captions(url, key, members)
        if head is None:
            return None
        meta, captions = head
        ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        if ext is None:
            self.stats.missing_images += 1
            self.stats.log(f"{url}:{key}: no image member")
            return None
        image: Any = members[ext]
        if self.decode:
            try:
                with Image.open(io.BytesIO(image)) as im:
                    image = im.convert("RGB")  # convert() forces the full decode
            except Exception as e:  # Pillow raises many types for damaged files
                self.stats.corrupt_images += 1
                self.stats.log(f"{url}:{key}: image does not decode ({type(e).__name__}: {e})")
                return None
        return {"key": key, "image": image, "captions": captions, "meta": meta, "url": url}

    def _meta_and_captions(self, url: str, key: str, members: dict[str, bytes]) -> tuple[dict, list[str]] | None:
        """A sample's .json object and its captions (the json's `captions`, else the .txt), or None
        (counted) when the json is bad or there is no caption."""
        meta: dict = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"].decode("utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError) as e:
                self.stats.bad_json += 1
                self.stats.log(f"{url}:{key}: bad json ({e})")
                return None
        captions = meta.get("captions")
        if not (isinstance(captions, list) and captions):
            txt = members.get("txt", b"").decode("utf-8", errors="replace").strip()
            captions = [txt] if txt else []
        captions = [c for c in captions if isinstance(c, str) and c.strip()]
        if not captions:
            self.stats.missing_captions += 1
            self.stats.log(f"{url}:{key}: no caption")
            return None
        return meta, captions


def iter_shards(
    urls_or_pattern: str | Path | Sequence[str | Path], *, decode: bool = True, stats: ShardStats | None = None
) -> ShardReader:
    """Iterate samples of WebDataset shards; bad samples and truncated shards are skipped and counted
    in `stats` (also available as the returned reader's `.stats`)."""
    return ShardReader(urls_or_pattern, decode=decode, stats=stats)
