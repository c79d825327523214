"""The numbering of a cache's samples, in memory that grows with its shards, not its samples.

A finished cache's shards tile videos × views: every view range (a "band": the views one
`--views` run added) is cut into shards along the videos, and every video that decoded has
every view. Sample `i` in key order is therefore view `i % V` of the `i // V`-th video that was
not skipped, and its shard is found by two binary searches. Nothing is held per sample: at
Kinetics scale (5.3 M samples in 83 000 shards) the whole index is five integer columns of
83 000 rows, which `node_index` maps from one file shared by every process of a node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from salt.latents.errors import CacheError
from salt.latents.samples import MAX_VIEWS, ShardId, parse_key

if TYPE_CHECKING:
    from salt.latents.manifest import Manifest

COLUMNS = ("video_start", "video_end", "view_start", "view_end", "held")


class ShardTable(Sequence):
    """A manifest's shards as integer columns, in (view range, first video) order: what a reader
    needs of them (rectangles and the samples each holds), without names, sizes or checksums.
    `held` counts a shard's samples of videos that were not skipped (what the index numbers).
    Indexing gives a `ShardRecord` without sizes or checksum; `load_manifest` has those."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns
        self.video_start, self.video_end = columns["video_start"], columns["video_end"]
        self.view_start, self.view_end = columns["view_start"], columns["view_end"]
        self.held = columns["held"]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ShardTable:
        rows = sorted(manifest.shards, key=lambda r: (r.view_start, r.video_start))
        rect = np.array([[r.video_start, r.video_end, r.view_start, r.view_end] for r in rows], dtype=np.int64)
        rect = rect.reshape(-1, 4)
        skipped = skipped_array(manifest)
        kept = (rect[:, 1] - np.searchsorted(skipped, rect[:, 1])) - (rect[:, 0] - np.searchsorted(skipped, rect[:, 0]))
        columns = {name: np.ascontiguousarray(rect[:, i]) for i, name in enumerate(COLUMNS[:4])}
        return cls({**columns, "held": kept * (rect[:, 3] - rect[:, 2])})

    def __len__(self) -> int:
        return len(self.video_start)

    def shard_id(self, index: int) -> ShardId:
        return ShardId(
            int(self.video_start[index]),
            int(self.video_end[index]),
            int(self.view_start[index]),
            int(self.view_end[index]),
        )

    def name(self, index: int) -> str:
        return self.shard_id(index).name

    def __getitem__(self, index):
        from salt.latents.manifest import ShardRecord

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        shard = self.shard_id(int(index) % len(self) if index < 0 else int(index))
        return ShardRecord(
            shard.name, shard.video_start, shard.video_end, shard.view_start, shard.view_end, int(self.held[index])
        )

    def first_rows(self, count: int) -> ShardTable:
        """The first `count` shards (a view, no copy)."""
        return ShardTable({name: column[:count] for name, column in self.columns.items()})


def skipped_array(manifest: Manifest) -> np.ndarray:
    return np.array(sorted(manifest.skipped_videos), dtype=np.int64)


class SampleIndex:
    """Sample index <-> (shard, video, view) over a `ShardTable` that tiles [0, num_videos) ×
    [0, views); skipped videos (sorted `skipped`) are left out of the numbering."""

    def __init__(self, table: ShardTable, skipped: np.ndarray, num_videos: int, views: int, where: str = ""):
        self.table, self.skipped, self.where = table, skipped, where
        self.num_videos, self.views = int(num_videos), int(views)
        self._bands = _bands(table, self.num_videos, self.views, where)
        self._kept = self.num_videos - len(skipped)
        # The k-th kept video is k + (skipped videos at or before it): a search over this.
        self._skipped_shift = skipped - np.arange(len(skipped), dtype=np.int64)

    def __len__(self) -> int:
        return self._kept * self.views

    def position(self, index_or_key: int | str) -> int:
        """The index of a sample given by index (negative counts from the end) or by key."""
        if isinstance(index_or_key, str):
            video, view = parse_key(index_or_key)
            skipped = self._is_skipped(video)
            if not (0 <= video < self.num_videos and view < self.views) or skipped:
                raise CacheError(f"{self.where}: no sample {index_or_key}")
            return self._rank(video) * self.views + view
        position = int(index_or_key)
        if not -len(self) <= position < len(self):
            raise IndexError(f"sample index {index_or_key} out of range for {len(self)} samples")
        return position % len(self)

    def locate(self, index: int) -> tuple[int, int, int]:
        """(shard index, video, view) of sample `index`."""
        rank, view = divmod(int(index), self.views)
        video = rank + int(np.searchsorted(self._skipped_shift, rank, side="right"))
        return self.shard_of(video, view), video, view

    def shard_of(self, video: int, view: int) -> int:
        band = self._bands[int(np.searchsorted(self._bands[:, 1], view, side="right"))]
        first, last = int(band[2]), int(band[3])
        return first + int(np.searchsorted(self.table.video_start[first:last], video, side="right")) - 1

    def keys(self) -> list[str]:
        ranks = np.arange(self._kept, dtype=np.int64)
        videos = ranks + np.searchsorted(self._skipped_shift, ranks, side="right")
        return [f"v{video:08d}k{view:03d}" for video in videos.tolist() for view in range(self.views)]

    def shard_samples(self, shard_index: int) -> list[tuple[int, int]]:
        """(video, view) of one shard in key order, as the writer stored them."""
        videos, views = self._shard_grid(shard_index)
        return [(int(video), int(view)) for video in videos for view in views]

    def shard_sample_indices(self, shard_index: int) -> np.ndarray:
        """The sample indices of one shard's samples, in key order."""
        videos, views = self._shard_grid(shard_index)
        ranks = videos - np.searchsorted(self.skipped, videos)
        return (ranks[:, None] * self.views + views[None, :]).reshape(-1)

    def _shard_grid(self, shard_index: int) -> tuple[np.ndarray, np.ndarray]:
        t = self.table
        videos = np.arange(t.video_start[shard_index], t.video_end[shard_index], dtype=np.int64)
        views = np.arange(t.view_start[shard_index], t.view_end[shard_index], dtype=np.int64)
        return videos[~np.isin(videos, self.skipped)], views

    def _rank(self, video: int) -> int:
        return video - int(np.searchsorted(self.skipped, video))

    def _is_skipped(self, video: int) -> bool:
        at = int(np.searchsorted(self.skipped, video))
        return at < len(self.skipped) and int(self.skipped[at]) == video


def _bands(table: ShardTable, num_videos: int, views: int, where: str) -> np.ndarray:
    """[view_start, view_end, first row, end row] per view range, checked to tile the cache."""
    bands, row = [], 0
    while row < len(table):
        start, end = int(table.view_start[row]), int(table.view_end[row])
        last = row + int(np.searchsorted(table.view_start[row:], start, side="right"))
        if np.any(table.view_end[row:last] != end):
            raise CacheError(f"{where}: shards of views {start}.. end at different views: not a finished cache")
        bands.append((start, end, row, last))
        row = last
    expected = 0
    for start, end, first, last in bands:
        video_start, video_end = table.video_start[first:last], table.video_end[first:last]
        gaps = video_start[1:] != video_end[:-1]
        if start != expected or video_start[0] != 0 or video_end[-1] != num_videos or np.any(gaps):
            raise CacheError(
                f"{where}: its shards do not cover videos 0..{num_videos - 1} x views {start}..{end - 1} exactly "
                "once (a cache written in pieces and not merged?) — run `salt cache-latents` with the same command"
            )
        expected = end
    if expected != views or expected > MAX_VIEWS:
        raise CacheError(f"{where}: its shards hold views 0..{expected - 1}, its manifest says {views}")
    return np.array(bands, dtype=np.int64).reshape(-1, 4)
