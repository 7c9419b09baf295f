"""The base config (defaults of docs/reference.md section 2); variants start from it."""
from reasonir_jax.config_base import base_config


def get_config():
  return base_config()
