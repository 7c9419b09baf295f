"""reasonir_jax: ReasonIR retrievers in JAX/Flax (train, export, evaluate)."""

__all__ = ["Encoder"]


def __getattr__(name):
  # Lazy, so that `import reasonir_jax.data` does not pull in the model stack.
  if name == "Encoder":
    from reasonir_jax.encoder import Encoder
    return Encoder
  raise AttributeError(name)
