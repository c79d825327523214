"""Where caches and video shards live: local folders, or object stores through fsspec URLs.

`resolve(path_or_url)` is the one place that reads a location. A plain path or `file://`
URL is a local path and keeps the local guarantees (temp file, fsync, rename). Any other
scheme is served by fsspec when its implementation is installed (`s3://` needs s3fs, `gs://`
gcsfs); credentials and endpoints come from the environment and fsspec's configuration (for
example `FSSPEC_S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`), never from our files. A scheme fsspec
does not know, or whose package is missing, is refused naming it: never turned into a local
folder (`Path("s3://b/k")` would be the folder `s3:/b/k`).

Object stores have no rename, but a single PUT (or a completed multipart upload) appears
whole or not at all. Writers therefore commit by order: a shard's tar, then its index, then
its done mark, the manifest last; readers ignore a tar without its index.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import IO

from salt.latents.errors import CacheError

LOCAL_SCHEMES = ("", "file", "local")


def split_scheme(path_or_url: str | os.PathLike) -> tuple[str, str]:
    """("s3", "bucket/key") for "s3://bucket/key"; ("", path) for a plain path."""
    text = os.fspath(path_or_url)
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme or not all(c.isalnum() or c in "+-." for c in scheme):
        return "", text
    return scheme.lower(), rest


def is_url(path_or_url: str | os.PathLike) -> bool:
    """True for a location only fsspec can reach (not a plain path, not file://)."""
    return split_scheme(path_or_url)[0] not in LOCAL_SCHEMES


def resolve(path_or_url: str | os.PathLike) -> str | Path:
    """A local `Path`, or the URL itself (checked: its scheme can be served here)."""
    scheme, rest = split_scheme(path_or_url)
    head = os.fspath(path_or_url).split("/", 1)[0]
    if not scheme and len(head) > 2 and head.endswith(":") and head[:-1].isalnum():
        # "s3:/bucket/key" (one slash, e.g. after a Path() round trip) would become a local folder "s3:"
        raise CacheError(
            f"{path_or_url}: looks like a URL with one slash after {head}; "
            f"write {head}//... for the store, or ./ before a local path"
        )
    if scheme in LOCAL_SCHEMES:
        return Path(rest) if scheme else Path(os.fspath(path_or_url))
    filesystem(os.fspath(path_or_url))  # refuses what cannot be served
    return os.fspath(path_or_url).rstrip("/")


def filesystem(url: str):
    """(fsspec file system, path inside it) for a URL whose scheme can be served."""
    import fsspec
    from fsspec.registry import known_implementations, registry

    scheme, _ = split_scheme(url)
    if scheme not in known_implementations and scheme not in registry:
        raise CacheError(
            f"{url}: the URL scheme {scheme}:// is not one this project can read or write (fsspec knows "
            "no such file system); use a local path, file://, s3://, gs:// or another fsspec URL"
        )
    try:
        fs = fsspec.filesystem(scheme, **_fail_fast(scheme))
        if scheme in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own loop around botocore's retries
    except ImportError:
        hint = known_implementations.get(scheme, {}).get("err", f"the fsspec implementation of {scheme}://")
        raise CacheError(f"{url}: {scheme}:// needs a package that is not installed ({hint})") from None
    return fs, fs._strip_protocol(url)


def _fail_fast(scheme: str) -> dict:
    """S3 without credentials or endpoint fails in seconds, not after s3fs's and botocore's
    nested retries (~40 s); throttling is still retried (botocore's standard mode, 3 attempts).
    Settings the user gave (fsspec config, FSSPEC_S3_*) win."""
    import fsspec.config

    if scheme not in ("s3", "s3a"):
        return {}
    if "config_kwargs" in fsspec.config.conf.get(scheme, {}):
        return {}
    return {"config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5}}


def umask() -> int:
    """This process's umask, read without changing it (os.umask(0) would, for a moment, let
    another thread create files anyone may write)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: the only other way to read it
    os.umask(mask)
    return mask


def make_readable(path: str | Path, folder: bool = False) -> None:
    """Give a file made by mkstemp / mkdtemp (0600 / 0700) the mode the umask gives any new
    file (0644 / 0755 by default), so a cache or checkpoint shared on a cluster is readable."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def join(base: str | Path, *parts: str) -> str | Path:
    if isinstance(base, Path) or not is_url(base):
        return Path(base, *parts)
    return "/".join([str(base).rstrip("/"), *parts])


def name_of(path: str | Path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).exists()
    fs, inner = filesystem(str(path))
    return fs.exists(inner)


def is_file(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).is_file()
    fs, inner = filesystem(str(path))
    return fs.isfile(inner)


def size(path: str | Path) -> int:
    if not is_url(path):
        return Path(path).stat().st_size
    fs, inner = filesystem(str(path))
    return int(fs.size(inner))


def read_bytes(path: str | Path) -> bytes:
    if not is_url(path):
        return Path(path).read_bytes()
    fs, inner = filesystem(str(path))
    return fs.cat_file(inner)


def read_range(path: str | Path, start: int, end: int) -> bytes:
    """Bytes [start, end): a seek locally, one range request on a store."""
    if not is_url(path):
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(end - start)
    fs, inner = filesystem(str(path))
    return fs.cat_file(inner, start=start, end=end)


def read_many(paths: list[str | Path]) -> list[bytes]:
    """Whole files, in order; on a store the requests go out concurrently (fsspec's batched cat),
    so 83 000 small objects take minutes, not the hours one request at a time would.

    Each is asked for from byte 0 on: a plain whole-object read first looks up the object's size,
    which s3fs answers by scanning its cached listing of the folder (one scan per object:
    quadratic in a listed folder's objects, 25 ms an object at 83 000 commit marks). A file that
    refuses the range (an empty one) is read again plainly, which also raises its real error."""
    if not paths or not is_url(paths[0]):
        return [read_bytes(path) for path in paths]
    fs, _ = filesystem(str(paths[0]))
    inner = [filesystem(str(path))[1] for path in paths]
    found = fs.cat(inner, on_error="return", start=0)
    return [fs.cat_file(name) if isinstance(found[name], Exception) else found[name] for name in inner]


def open_read(path: str | Path) -> IO[bytes]:
    """A sequential reader (for hashing a whole file without holding it)."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(str(path))
    return fs.open(inner, "rb", block_size=8 << 20)


def list_names(folder: str | Path, suffix: str = "") -> list[str]:
    """Sorted names of the files directly inside `folder` that end with `suffix` ([] if none)."""
    if not is_url(folder):
        folder = Path(folder)
        return sorted(p.name for p in folder.glob(f"*{suffix}") if p.is_file()) if folder.is_dir() else []
    fs, inner = filesystem(str(folder))
    try:
        entries = fs.ls(inner, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(name_of(e["name"]) for e in entries if e.get("type") == "file" and e["name"].endswith(suffix))


def write_bytes(path: str | Path, data: bytes) -> None:
    """A whole object in one PUT (stores only; local files go through write_json_atomic & co)."""
    fs, inner = filesystem(str(path))
    fs.pipe_file(inner, data)


def upload(local: Path, path: str) -> None:
    """Copy a finished local file to a store; the object appears when the upload completes."""
    fs, inner = filesystem(path)
    fs.put_file(str(local), inner)


def remove(path: str | Path) -> None:
    if not is_url(path):
        Path(path).unlink(missing_ok=True)
        return
    fs, inner = filesystem(str(path))
    if fs.exists(inner):
        fs.rm_file(inner)


def remove_tree(path: str | Path) -> None:
    if not is_url(path):
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    fs, inner = filesystem(str(path))
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


@contextlib.contextmanager
def file_lock(path: Path):
    """An advisory lock between processes of this machine, held while the block runs (a local
    path; its folder is made). Without POSIX locks (Windows) the block runs unlocked: callers
    write whole files by rename, so two writers at once write the same bytes."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
