"""`verify(cache)`: every format the manifest lists, checked file by file and sample by sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

from salt.latents import storage
from salt.latents.errors import CacheError
from salt.latents.manifest import load_manifest
from salt.latents.samples import Problem, sample_key

if TYPE_CHECKING:
    from salt.latents.manifest import ShardRecord
    from salt.latents.reader import LatentCache
    from salt.latents.sources import WdsSource, ZarrSource


def verify(cache: LatentCache, shards: int = 0) -> list[Problem]:
    """Check every format listed in the manifest: files, checksums, and every sample decoded.
    An empty list means the cache is healthy. `shards` > 0 checks only that many shards, spread
    evenly over the cache (a quick look at a large one; the full check reads every byte)."""
    problems: list[Problem] = []
    manifest = cache.manifest
    if manifest.sample_count == 0:  # every video skipped: nothing a student could read
        problems.append(
            Problem(
                "manifest.json",
                None,
                f"no samples: all {len(manifest.skipped)} videos were skipped "
                "(their reasons: 'skipped' in manifest.json); cache the data again once it decodes",
            )
        )
    # A low-rank cache's basis was checked against the manifest when the cache was opened.
    # The reader's manifest holds no sizes or checksums: the files are checked against the whole one.
    records = {record.name: record for record in load_manifest(cache.path).shards}
    total = len(manifest.shards)
    chosen = range(total) if not 0 < shards < total else sorted({(i * total) // shards for i in range(shards)})
    for shard_index in chosen:
        record = records[manifest.shards.name(shard_index)]
        ids = cache.shard_samples(shard_index)
        for source in cache.sources.values():
            problems += verify_shard(source, record, ids)
    return problems


def verify_shard(source: WdsSource | ZarrSource, record: ShardRecord, ids: list[tuple[int, int]]) -> list[Problem]:
    """One shard of one source: its files, then every sample read and decoded."""
    tag = f"[{source.format}]"
    keys = [sample_key(video, view) for video, view in ids]
    data = None
    if source.read_ahead:  # an object store: the shard in one request, then checked and read in memory
        try:
            data = storage.read_bytes(source.shard_url(record.name))
        except (FileNotFoundError, OSError):
            data = None  # the file checks below say what is wrong
    problems = [Problem(record.name, None, f"{tag} {reason}") for reason in source.check(record, keys, data)]
    try:
        shard = source.open(record.name, data=data)
    except CacheError:
        return problems  # reported by the file checks above
    with shard:
        for (video, view), key in zip(ids, keys):
            try:
                shard.read(video, view)
            except CacheError as error:
                problems.append(Problem(record.name, key, f"{tag} {error}"))
    return problems
