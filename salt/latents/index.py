"""The numbering of a cache's samples: index `i` is the i-th sample in key order.

Samples are numbered video * MAX_VIEWS + view (the key order) in numpy arrays, not lists of
tuples: a million samples cost 16 MB and pickle quickly into workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from salt.latents.errors import CacheError
from salt.latents.samples import MAX_VIEWS, parse_key, sample_key

if TYPE_CHECKING:
    from salt.latents.manifest import Manifest


class SampleIndex:
    """Sample index <-> (shard, video, view) of one manifest's samples (skipped videos left out)."""

    def __init__(self, manifest: Manifest, where: str = "") -> None:
        self.where = where  # the cache's path, for messages
        self._shards = manifest.shards
        self._skipped_videos = manifest.skipped_videos
        codes, owners = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        skipped = np.array(sorted(self._skipped_videos), dtype=np.int64)
        for i, record in enumerate(self._shards):
            videos = np.arange(record.video_start, record.video_end, dtype=np.int64)
            videos = videos[~np.isin(videos, skipped)]
            views = np.arange(record.view_start, record.view_end, dtype=np.int64)
            codes.append((videos[:, None] * MAX_VIEWS + views[None, :]).reshape(-1))
            owners.append(np.full(codes[-1].size, i, dtype=np.int64))
        codes_all, owners_all = np.concatenate(codes), np.concatenate(owners)
        order = np.argsort(codes_all, kind="stable")
        self._sorted_codes, self._sorted_owner = codes_all[order], owners_all[order]

    def __len__(self) -> int:
        return len(self._sorted_codes)

    def position(self, index_or_key: int | str) -> int:
        """The index of a sample given by index (negative counts from the end) or by key."""
        if isinstance(index_or_key, str):
            video, view = parse_key(index_or_key)
            code = video * MAX_VIEWS + view
            position = int(np.searchsorted(self._sorted_codes, code))
            if position == len(self) or self._sorted_codes[position] != code:
                raise CacheError(f"{self.where}: no sample {index_or_key}")
            return position
        position = int(index_or_key)
        if not -len(self) <= position < len(self):
            raise IndexError(f"sample index {index_or_key} out of range for {len(self)} samples")
        return position % len(self)

    def locate(self, index: int) -> tuple[int, int, int]:
        """(shard index, video, view) of sample `index`."""
        video, view = divmod(int(self._sorted_codes[index]), MAX_VIEWS)
        return int(self._sorted_owner[index]), video, view

    def keys(self) -> list[str]:
        return [sample_key(*divmod(int(c), MAX_VIEWS)) for c in self._sorted_codes]

    def shard_samples(self, shard_index: int) -> list[tuple[int, int]]:
        """(video, view) of one shard in key order, as the writer stored them."""
        return self._shards[shard_index].shard_id.sample_ids(self._skipped_videos)

    def shard_sample_indices(self, shard_index: int) -> np.ndarray:
        """The sample indices of one shard's samples, in key order."""
        ids = self.shard_samples(shard_index)
        codes = np.array([video * MAX_VIEWS + view for video, view in ids], dtype=np.int64)
        return np.searchsorted(self._sorted_codes, codes).astype(np.int64)
