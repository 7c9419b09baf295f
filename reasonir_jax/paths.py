"""Paths that may be local or remote (gs://, s3://, or any fsspec filesystem), in one place.

Every path a user gives (data globs, workdir, init_from, export out, evaluation data) goes
through these helpers, and so do the file chores several modules share: expanding comma-separated
inputs and globs (`expand`), reading JSON-lines and parquet records (`iter_records`) and writing a
file that readers see whole or not at all (`atomic_write`). Local paths use the standard library; a path with a `scheme://` prefix
goes to fsspec (the filesystem etils.epath and Orbax use for gs://: gcsfs, from the `gcs` extra).
Remote paths are never passed to `os.path.abspath` or `os.makedirs`, which would turn
`gs://b/run` into a local folder `./gs:/b/run`.

Remote reads are buffered: `open(path, "rb")` reads in blocks of `READ_BLOCK_BYTES`, so a
sequential scan of a TFRecord file costs one request per block, not one per record.
"""
from __future__ import annotations

import builtins
import contextlib
import glob as _glob
import hashlib
import io
import json
import os
import posixpath
import shutil
import uuid
from typing import IO, Iterator, Sequence

READ_BLOCK_BYTES = 16 << 20  # one remote request per 16 MiB of a sequential read


class PathError(OSError):
  """A path that cannot be used (missing, unreadable, unwritable); the message names it."""


def is_remote(path) -> bool:
  """True for `scheme://...` (gs://, s3://, memory://, ...); `file://` counts as local."""
  s = os.fspath(path)
  return "://" in s and not s.startswith("file://")


def _local(path) -> str:
  s = os.fspath(path)
  return s[len("file://"):] if s.startswith("file://") else s


def filesystem(path):
  """(fsspec filesystem, path as that filesystem names it) of a remote path."""
  import fsspec
  s = os.fspath(path)
  protocol = s.split("://", 1)[0]
  try:
    fs = fsspec.filesystem("gcs" if protocol == "gs" else protocol)
  except (ImportError, ValueError) as e:
    extra = " (pip install 'reasonir-jax[gcs]')" if protocol in ("gs", "gcs") else ""
    raise PathError(f"cannot open {s!r}: no filesystem for {protocol}://{extra}: {e}") from e
  return fs, fs._strip_protocol(s)


def _with_protocol(path: str, like: str) -> str:
  """fsspec lists paths without their scheme; put back the one the user wrote."""
  return path if "://" in path else f"{like.split('://', 1)[0]}://{path}"


def join(path, *names: str) -> str:
  s = os.fspath(path)
  if is_remote(s):
    return posixpath.join(s.rstrip("/") if not s.endswith("://") else s, *names)
  return os.path.join(s, *names)


def has_magic(pattern: str) -> bool:
  return _glob.has_magic(pattern)


def glob(pattern) -> list[str]:
  """Sorted paths matching `pattern` (local or remote), without writers' `.tmp-` files. A
  pattern that matches nothing is a FileNotFoundError naming it; a bucket that cannot be listed
  a PathError naming it."""
  s = os.fspath(pattern)
  if not is_remote(s):
    matched = _glob.glob(_local(s))
  else:
    fs, inner = filesystem(s)
    try:
      matched = [_with_protocol(p, s) for p in fs.glob(inner)]
    except Exception as e:  # noqa: BLE001 - permission / missing bucket: report the pattern
      raise PathError(f"cannot list {s!r}: {type(e).__name__}: {e}") from e
  matched = sorted(p for p in matched if ".tmp-" not in p)
  if not matched:
    raise FileNotFoundError(f"no files match {s!r}")
  return matched


def _query(path, local_fn, remote_method: str):
  """`local_fn(path)` for a local path, else the fsspec filesystem's `remote_method(path)`."""
  if not is_remote(path):
    return local_fn(_local(path))
  fs, inner = filesystem(path)
  return getattr(fs, remote_method)(inner)


def exists(path) -> bool:
  return bool(_query(path, os.path.exists, "exists"))


def isfile(path) -> bool:
  return bool(_query(path, os.path.isfile, "isfile"))


def isdir(path) -> bool:
  return bool(_query(path, os.path.isdir, "isdir"))


def getsize(path) -> int:
  return int(_query(path, os.path.getsize, "size"))


def open(path, mode: str = "rb", block_size: int = READ_BLOCK_BYTES) -> IO:  # noqa: A001
  """A file object for `path`; remote ones read ahead `block_size` bytes per request."""
  if not is_remote(path):
    return builtins.open(_local(path), mode)
  fs, inner = filesystem(path)
  try:
    return fs.open(inner, mode, block_size=block_size)
  except FileNotFoundError:
    raise
  except Exception as e:  # noqa: BLE001 - permission errors differ per backend
    raise PathError(f"cannot open {os.fspath(path)!r} ({mode}): {type(e).__name__}: {e}") from e


def makedirs(path) -> None:
  if not is_remote(path):
    os.makedirs(_local(path), exist_ok=True)
    return
  fs, inner = filesystem(path)
  fs.makedirs(inner, exist_ok=True)


def listdir(path) -> list[str]:
  """Names (not paths) of the entries of a folder."""
  if not is_remote(path):
    return sorted(os.listdir(_local(path)))
  fs, inner = filesystem(path)
  return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False))


def rmtree(path) -> None:
  if not is_remote(path):
    shutil.rmtree(_local(path), ignore_errors=True)
    return
  fs, inner = filesystem(path)
  if fs.exists(inner):
    fs.rm(inner, recursive=True)


def absolute(path) -> str:
  """Local paths made absolute; remote ones unchanged (what Orbax is given)."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(_local(path))


@contextlib.contextmanager
def atomic_write(path, mode: str = "w") -> Iterator[IO]:
  """A file to write that readers see whole or not at all: a local one is written under a
  temporary name (which `glob` leaves out), fsynced and renamed into place when the block ends
  cleanly, and removed if it raises; an object store publishes an upload only once it completes."""
  if is_remote(path):
    with open(path, mode) as f:
      yield f
    return
  local = _local(path)
  tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    with builtins.open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, local)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path, text: str) -> None:
  """Writes `text` so that a reader never sees half a file (`atomic_write`)."""
  with atomic_write(path) as f:
    f.write(text)


def read_text(path) -> str:
  with open(path, "r") as f:
    return f.read()


def check_writable(path) -> None:
  """Creates `path` if needed and writes + deletes a probe file there; a PathError naming the
  path if that fails (read-only disk, a bucket without write permission, a missing bucket)."""
  probe = join(path, f".write-probe-{uuid.uuid4().hex[:8]}")
  try:
    makedirs(path)
    with open(probe, "w") as f:
      f.write("ok")
    if is_remote(probe):
      fs, inner = filesystem(probe)
      fs.rm(inner)
    else:
      os.remove(probe)
  except Exception as e:  # noqa: BLE001 - any failure means the workdir is unusable
    raise PathError(f"workdir {os.fspath(path)!r} is not writable: {type(e).__name__}: {e}") from e


def local_mirror(remote, kind: str) -> str:
  """A local folder standing in for the remote folder `remote` where an object store cannot do
  what a stage needs (append, fsync, rename): $REASONIR_CACHE (default ~/.cache/reasonir_jax)
  /KIND/<hash of `remote`>, the same on every run of this machine, so a rerun finds it."""
  root = os.environ.get("REASONIR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "reasonir_jax"))
  folder = hashlib.sha256(os.fspath(remote).rstrip("/").encode()).hexdigest()[:16]
  return os.path.join(root, kind, folder)


def stage_local(path, cache_dir: str) -> str:
  """A local copy of remote file `path` under `cache_dir` (reused while its size matches), made
  by one sequential buffered download; local paths are returned unchanged."""
  if not is_remote(path):
    return _local(path)
  size = getsize(path)
  digest = hashlib.sha1(os.fspath(path).encode()).hexdigest()[:16]
  local = os.path.join(cache_dir, f"{digest}-{posixpath.basename(os.fspath(path))}")
  if os.path.isfile(local) and os.path.getsize(local) == size:
    return local
  os.makedirs(cache_dir, exist_ok=True)
  with open(path, "rb") as src, atomic_write(local, "wb") as dst:
    shutil.copyfileobj(src, dst, READ_BLOCK_BYTES)
  return local


def expand(pattern_or_paths, dir_extensions: Sequence[str] = ()) -> list[str]:
  """The files of comma-separated paths and glob patterns (or of a list of them), local or
  remote, in order: a pattern gives its matches sorted; with `dir_extensions`, a directory gives
  its files with those extensions, sorted. A pattern that matches nothing, a missing file and a
  directory without such files are FileNotFoundErrors naming them."""
  if isinstance(pattern_or_paths, (str, os.PathLike)):
    items = [p for p in os.fspath(pattern_or_paths).split(",") if p]
  else:
    items = [os.fspath(p) for p in pattern_or_paths]
  found = []
  for item in items:
    if has_magic(item):
      found.extend(glob(item))
    elif dir_extensions and isdir(item):
      files = []
      for ext in dir_extensions:
        try:
          files.extend(glob(join(item, f"*.{ext}")))
        except FileNotFoundError:
          pass
      if not files:
        raise FileNotFoundError(f"no .{', .'.join(dir_extensions)} files in {item!r}")
      found.extend(sorted(files))
    elif isfile(item):
      found.append(item)
    else:
      raise FileNotFoundError(f"no such file: {item!r}")
  return found


def iter_records(path) -> Iterator[tuple[str, dict]]:
  """(where, record) for each record of a JSON-lines (.jsonl, .json) or parquet file, local or
  remote; `where` is `path:line` or `path[row i]`. Parquet is read in batches, not whole; a line
  that is not JSON is a ValueError naming it."""
  path = os.fspath(path)
  with open(path, "rb") as raw:
    if path.endswith(".parquet"):
      import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
      i = 0
      for batch in pq.ParquetFile(raw).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
          yield f"{path}[row {i}]", record
          i += 1
      return
    for n, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), 1):
      if line.strip():
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        yield f"{path}:{n}", record
