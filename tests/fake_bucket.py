"""A local fake GCS bucket for tests: `gs://BUCKET/x` is served from `ROOT/BUCKET/x` through fsspec.

`install(root)` registers it as fsspec's "gcs" implementation in this process (epath and
reasonir_jax.paths then use it for every gs:// path, with no network); child processes call
`install_from_env()` first, reading the root from FAKE_GCS_ROOT. Orbax writes arrays with
TensorStore's own gcs driver: tests/fake_gcs_server.py serves the same folder to it.
"""
import os

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

ENV = "FAKE_GCS_ROOT"


class FakeGCSFileSystem(DirFileSystem):
  """gs://BUCKET/x -> ROOT/BUCKET/x; a bucket that is not a folder of ROOT does not exist."""
  protocol = ("gs", "gcs")

  def __init__(self, *args, **kwargs):
    super().__init__(path=os.environ[ENV], fs=LocalFileSystem())

  # Read on every call: epath caches its filesystem instance across tests with other roots.
  @property
  def path(self):
    return os.environ[ENV]

  @path.setter
  def path(self, value):
    pass

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for p in ("gs://", "gcs://"):
      if path.startswith(p):
        path = path[len(p):]
    return path.rstrip("/")

  def _join(self, path):
    if isinstance(path, str):
      path = self._strip_protocol(path)
      bucket = path.split("/", 1)[0]
      if not os.path.isdir(os.path.join(self.path, bucket)):
        raise FileNotFoundError(f"bucket {bucket!r} does not exist")
      return super()._join(path)
    return [self._join(p) for p in path]

  def _open(self, path, mode="rb", *args, **kwargs):
    if "w" in mode or "a" in mode:  # object stores have no folders to create first
      os.makedirs(os.path.dirname(self._join(path)), exist_ok=True)
    return super()._open(path, mode, *args, **kwargs)

  def open(self, path, mode="rb", *args, **kwargs):
    if "w" in mode or "a" in mode:
      os.makedirs(os.path.dirname(self._join(path)), exist_ok=True)
    return super().open(path, mode, *args, **kwargs)


def install(root: str) -> None:
  os.environ[ENV] = str(root)
  # Orbax asks google-cloud-storage whether a bucket has a hierarchical namespace (one HTTP
  # call, and a package the tests need not install); a fake bucket is flat.
  from orbax.checkpoint._src.path import gcs_utils
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
  fsspec.register_implementation("gcs", FakeGCSFileSystem, clobber=True)
  fsspec.register_implementation("gs", FakeGCSFileSystem, clobber=True)
  FakeGCSFileSystem.clear_instance_cache()


def install_from_env() -> None:
  if os.environ.get(ENV):
    install(os.environ[ENV])
