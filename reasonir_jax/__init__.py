"""reasonir_jax: ReasonIR retrievers in JAX/Flax (train, export, evaluate)."""
import os

# One client for gs://: etils.epath (and so Orbax's checkpoint metadata) goes through fsspec/gcsfs
# like reasonir_jax.paths. With TensorFlow importable, epath would otherwise use TensorFlow's GCS
# filesystem: a second client, with its own credentials, retries and no STORAGE_EMULATOR_HOST.
# Set at import, before epath first looks (it caches the answer); a user's own value is kept.
os.environ.setdefault("EPATH_USE_TF", "false")

__all__ = ["Encoder"]


def __getattr__(name):
  # Lazy, so that `import reasonir_jax.data` does not pull in the model stack.
  if name == "Encoder":
    from reasonir_jax.encoder import Encoder
    return Encoder
  raise AttributeError(name)
