"""Deprecated module paths, kept for one release: an old module name resolves to its new home."""
from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType


def alias(old_name: str, new_name: str) -> ModuleType:
  """Makes `import old_name` give the module `new_name` itself (not a copy), so attributes set on
  either name (tests' monkeypatching) are seen by both. Run as `python -m old_name`, the caller
  keeps its own `__main__` and calls the new module's entry point."""
  if old_name != "__main__":
    warnings.warn(f"{old_name} moved to {new_name}; the old name goes in the next release",
                  DeprecationWarning, stacklevel=3)
  module = importlib.import_module(new_name)
  if old_name != "__main__":
    sys.modules[old_name] = module
  return module
