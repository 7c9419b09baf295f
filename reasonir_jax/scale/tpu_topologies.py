"""TPU slice names (`v5p-128`, `v5e-256`, ...) mapped to what AOT compiles and launch scripts need.

Pure Python (no jax import) so the launch scripts can ask it for host counts and runtime
versions: `python -m reasonir_jax.scale.tpu_topologies v5p-128 hosts`.

Naming follows Cloud TPU: v4 and v5p slice names count TensorCores (2 per chip, fused into
one "megacore" JAX device), v5e and v6e names count chips. `v5litepod-N` is the Cloud name
of `v5e-N` and is accepted too.
"""
from __future__ import annotations

import dataclasses
import math
import sys

from reasonir_jax.training.flops import PEAK_BF16_FLOPS

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipKind:
  generation: str          # prefix of libtpu's topology name, e.g. "v5" in "v5:4x4x4"
  hbm_bytes: int           # HBM per chip (docs/reference.md section 9)
  peak_bf16_flops: float   # dense bf16 FLOP/s per chip (training/flops.py)
  cores_per_chip: int      # TensorCores per chip (slice names of v4/v5p count these)
  chip_config_name: str    # "megacore": one JAX device drives both cores of a chip
  chips_per_host: int
  gcloud_prefix: str       # accelerator-type prefix gcloud expects
  runtime_version: str     # default TPU VM software version for `gcloud ... create`
  # Host RAM per chip, where the Cloud TPU docs give the VM's memory (v5p: 448 GB per 4-chip
  # VM); None: not checked. Remat `offload` keeps layer inputs there.
  host_bytes_per_chip: int | None = None


CHIPS = {
    "v4": ChipKind("v4", 32 * GIB, PEAK_BF16_FLOPS["v4"], 2, "megacore", 4, "v4",
                   "tpu-ubuntu2204-base"),
    "v5p": ChipKind("v5", 95 * GIB, PEAK_BF16_FLOPS["v5p"], 2, "megacore", 4, "v5p",
                    "v2-alpha-tpuv5", 448 * 10**9 // 4),
    "v5e": ChipKind("v5e", 16 * GIB, PEAK_BF16_FLOPS["v5e"], 1, "default", 4, "v5litepod",
                    "v2-alpha-tpuv5-lite"),
    "v6e": ChipKind("v6e", 32 * GIB, PEAK_BF16_FLOPS["v6e"], 1, "default", 4, "v6e",
                    "v2-alpha-tpuv6e"),
}

# Physical chip grid of each slice. v4/v5p are 3-D tori (a dimension wraps once it is >= 4
# chips and the slice is at least a full 4x4x4 cube); v5e/v6e are 2-D (wrap at 16).
_GRIDS = {
    "v4": {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4), 64: (2, 4, 4), 128: (4, 4, 4),
           256: (4, 4, 8), 512: (4, 8, 8), 1024: (8, 8, 8), 2048: (8, 8, 16), 4096: (8, 16, 16)},
    "v5p": {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4), 64: (2, 4, 4), 128: (4, 4, 4),
            256: (4, 4, 8), 384: (4, 4, 12), 512: (4, 8, 8), 768: (4, 8, 12), 1024: (8, 8, 8),
            2048: (8, 8, 16), 4096: (8, 16, 16), 8192: (16, 16, 16)},
    "v5e": {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
            256: (16, 16)},
    "v6e": {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
            256: (16, 16)},
}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                     # canonical, e.g. "v5p-128"
  chip: ChipKind
  grid: tuple[int, ...]         # chips along each physical axis
  wrap: tuple[bool, bool, bool]  # torus links per axis

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def hosts(self) -> int:
    b = self.chips_per_host_bounds
    return max(1, self.chips // (b[0] * b[1] * b[2]))

  @property
  def topology_name(self) -> str:
    """The name libtpu's topology API takes, e.g. "v5:4x4x4"."""
    return f"{self.chip.generation}:{'x'.join(str(d) for d in self.grid)}"

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    grid3 = (*self.grid, 1) if len(self.grid) == 2 else self.grid
    # One host: v5e/v6e slices of up to 8 chips, v4/v5p slices of up to 4.
    if self.chips <= (8 if len(self.grid) == 2 else self.chip.chips_per_host):
      return grid3
    return (2, 2, 1)

  @property
  def gcloud_accelerator_type(self) -> str:
    return f"{self.chip.gcloud_prefix}-{self.name.split('-')[1]}"

  @property
  def hbm_bytes(self) -> int:
    return self.chip.hbm_bytes


def _wrap(grid: tuple[int, ...]) -> tuple[bool, bool, bool]:
  if len(grid) == 3:
    full_cube = all(d >= 4 for d in grid)
    return (full_cube, full_cube, full_cube)
  return (grid[0] >= 16, grid[1] >= 16, False)


def _build() -> dict[str, Slice]:
  table = {}
  for family, grids in _GRIDS.items():
    for size, grid in grids.items():
      name = f"{family}-{size}"
      table[name] = Slice(name, CHIPS[family], grid, _wrap(grid))
  return table


SLICES: dict[str, Slice] = _build()
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


def get_slice(name: str) -> Slice:
  """Looks up `v5p-128`, `v5litepod-256`, ...; an unknown name lists the known ones."""
  key = name.strip().lower()
  family, _, size = key.partition("-")
  key = f"{_ALIASES.get(family, family)}-{size}"
  if key not in SLICES:
    known = ", ".join(sorted(SLICES, key=lambda s: (s.split("-")[0], int(s.split("-")[1]))))
    raise ValueError(f"unknown TPU topology {name!r}; known: {known}")
  return SLICES[key]


def _main(argv: list[str]) -> int:
  """`python -m reasonir_jax.scale.tpu_topologies NAME FIELD` prints one field (shell scripts)."""
  fields = ("hosts", "chips", "topology_name", "gcloud_accelerator_type", "runtime_version",
            "hbm_bytes")
  if len(argv) != 2 or argv[1] not in fields:
    print(f"usage: python -m reasonir_jax.scale.tpu_topologies SLICE {{{'|'.join(fields)}}}",
          file=sys.stderr)
    return 2
  try:
    s = get_slice(argv[0])
  except ValueError as e:
    print(e, file=sys.stderr)
    return 2
  value = s.chip.runtime_version if argv[1] == "runtime_version" else getattr(s, argv[1])
  print(value)
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
