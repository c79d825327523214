"""A cache's index at any size (issue 43): the numbering of samples from the shards alone, the
epoch order without per-sample arrays, one index file per node shared by every process, and a
reader's memory that does not grow with the number of samples."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from salt.latents import EpochOrder, ShardId, load_manifest, open_cache, verify
from salt.latents.node_index import index_dir
from salt.tools.scale_caches import fabricate
from tests.test_latents import flip_byte, member_offset, write_cache


def views_grown(root, skipped=frozenset({1, 5})):
    """8 videos, views added as 1, then 2, then 4 (three view bands), videos 1 and 5 skipped."""
    manifest = None
    for band in ((0, 1), (1, 2), (2, 4)):
        manifest = write_cache(
            root, num_videos=8, view_range=band, skipped=skipped, previous=manifest, formats=("wds",)
        )
    return manifest


def test_the_index_numbers_samples_in_key_order_from_the_shards_alone(tmp_path):
    views_grown(tmp_path)
    cache = open_cache(tmp_path)
    expected = [f"v{v:08d}k{k:03d}" for v in range(8) if v not in (1, 5) for k in range(4)]
    assert cache.keys() == expected and len(cache) == 24
    for i, key in enumerate(expected):
        shard, video, view = cache.locate(i)
        assert cache.index.position(key) == i and cache.key(i) == key
        assert ShardId.from_name(cache.manifest.shards.name(shard)).contains(video, view)
    for shard in range(len(cache.manifest.shards)):
        indices = cache.shard_sample_indices(shard)
        assert [expected[i] for i in indices] == [f"v{v:08d}k{k:03d}" for v, k in cache.shard_samples(shard)]
        assert len(indices) == cache.manifest.shards.held[shard]
    first_two = open_cache(tmp_path, views=2)
    assert first_two.keys() == [key for key in expected if int(key[-3:]) < 2]
    for missing in ("v00000001k000", "v00000000k004", "v00000008k000"):
        with pytest.raises(Exception, match=f"no sample {missing}"):
            cache.get(missing)


def test_the_epoch_order_is_the_documented_one_at_every_position(tmp_path):
    """Shards shuffled by (seed, epoch), each shard's samples by (seed, epoch, shard): the order
    training has used all along, found position by position without building the epoch."""
    views_grown(tmp_path)
    cache = open_cache(tmp_path)
    order = EpochOrder(cache, seed=5)
    for epoch in (0, 1):
        shards = np.random.default_rng([5, epoch]).permutation(len(cache.manifest.shards))
        parts = [
            cache.shard_sample_indices(s)[
                np.random.default_rng([5, epoch, s]).permutation(cache.manifest.shards.held[s])
            ]
            for s in shards
        ]
        expected = np.concatenate(parts)
        assert sorted(expected.tolist()) == list(range(len(cache)))
        np.testing.assert_array_equal(order.epoch(epoch), expected)
        positions = np.random.default_rng(epoch).permutation(len(cache))  # any order: a resume anywhere
        assert [order(epoch * len(cache) + int(p)) for p in positions] == expected[positions].tolist()


def test_a_readers_memory_does_not_grow_with_the_samples(tmp_path):
    """Open, epoch order and positions across the epoch, at 10 000 and 400 000 samples: the
    Python memory a reader holds differs by well under a megabyte (the index is 24 bytes a
    sample per process before; the node's shared file holds 40 bytes a shard)."""
    peaks = {}
    for samples in (10_000, 400_000):
        cache = fabricate(tmp_path / f"c{samples}", samples, real=False)
        open_cache(cache.path)  # the node's index file is written once, by the first to open
        tracemalloc.start()
        reader = open_cache(cache.path)
        order = EpochOrder(reader, seed=0)
        [order(int(p)) for p in np.linspace(0, len(reader) * 2 - 1, 50)]
        peaks[samples] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(reader) == samples
    assert peaks[400_000] - peaks[10_000] < 512 * 1024, peaks
    files = sorted(index_dir().glob("*.idx"), key=lambda p: p.stat().st_size)
    assert files[-1].stat().st_size < 6250 * 40 + 8192  # 6 250 shards: 40 bytes each and a header


MAPPED = (
    "import json, os, sys; from salt.latents import open_cache; cache = open_cache(sys.argv[1]); "
    "print(json.dumps([line.split()[-1] for line in open('/proc/self/maps') if line.rstrip().endswith('.idx')]))"
)


def mapped_index_files() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if line.rstrip().endswith(".idx")}


def test_every_process_of_a_node_maps_one_index_file_and_a_new_manifest_gets_a_new_one(tmp_path):
    manifest = write_cache(tmp_path, num_videos=8, view_range=(0, 2), formats=("wds",))
    cache = open_cache(tmp_path)
    ours = mapped_index_files()
    child = subprocess.run([sys.executable, "-c", MAPPED, str(tmp_path)], capture_output=True, text=True, check=True)
    assert len(ours) == 1 and ours == set(json.loads(child.stdout)), (ours, child.stdout)
    assert len(cache) == 16
    write_cache(tmp_path, num_videos=8, view_range=(2, 4), previous=manifest, formats=("wds",))  # a new manifest
    grown = open_cache(tmp_path)
    assert len(grown) == 32 and len(mapped_index_files() - ours) == 1


def test_a_cache_opens_without_a_writable_index_folder_or_with_a_damaged_index(tmp_path, monkeypatch):
    write_cache(tmp_path / "cache", num_videos=4, formats=("wds",))
    keys = open_cache(tmp_path / "cache").keys()
    for damaged in sorted(index_dir().glob("*.idx")):
        damaged.write_bytes(b"SALTIDX1" + b"\x00" * 40)  # a file cut short (a full /dev/shm)
    assert open_cache(tmp_path / "cache").keys() == keys
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SALT_INDEX_DIR", str(tmp_path / "a-file" / "index"))  # cannot be made
    assert index_dir() is None and open_cache(tmp_path / "cache").keys() == keys


def test_a_sampled_verification_checks_that_many_shards_spread_over_the_cache(tmp_path):
    write_cache(tmp_path, num_videos=8, shard_videos=1, formats=("wds",))
    cache = open_cache(tmp_path)
    bad = cache.manifest.shards.name(7)
    flip_byte(tmp_path / "wds" / f"{bad}.tar", member_offset(tmp_path, bad, "v00000007k001.latents") + 20)
    assert {p.shard for p in verify(cache)} == {bad}
    assert verify(cache, shards=2) == []  # shards 0 and 4
    assert {p.shard for p in verify(cache, shards=8)} == {bad}
    assert [r.name for r in load_manifest(tmp_path).shards][7] == bad
