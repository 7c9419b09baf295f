"""The slice-name table: topology names libtpu gets, chip counts, hosts, HBM, and its CLI."""
import subprocess
import sys

import pytest

from reasonir_jax.scale import tpu_topologies as tt

GIB = 1024**3


@pytest.mark.parametrize("name,topology,chips,hosts,hbm_gib", [
    ("v5p-8", "v5:2x2x1", 4, 1, 95),
    ("v5p-64", "v5:2x4x4", 32, 8, 95),
    ("v5p-128", "v5:4x4x4", 64, 16, 95),
    ("v5p-512", "v5:4x8x8", 256, 64, 95),
    ("v5p-1024", "v5:8x8x8", 512, 128, 95),
    ("v5e-8", "v5e:2x4", 8, 1, 16),
    ("v5e-256", "v5e:16x16", 256, 64, 16),
    ("v6e-256", "v6e:16x16", 256, 64, 32),
    ("v4-32", "v4:2x2x4", 16, 4, 32),
])
def test_slices_map_to_libtpu_topologies(name, topology, chips, hosts, hbm_gib):
  s = tt.get_slice(name)
  assert s.topology_name == topology
  assert s.chips == chips
  assert s.hosts == hosts
  assert s.hbm_bytes == hbm_gib * GIB


def test_names_count_cores_on_v4_v5p_and_chips_on_v5e_v6e():
  # v5p-N has N TensorCores = N/2 megacore chips; v5e-N / v6e-N have N chips.
  for name, s in tt.SLICES.items():
    size = int(name.split("-")[1])
    assert s.chips * s.chip.cores_per_chip == size, name


def test_torus_wraps_only_on_full_dimensions():
  assert tt.get_slice("v5p-128").wrap == (True, True, True)
  assert tt.get_slice("v5p-64").wrap == (False, False, False)
  assert tt.get_slice("v6e-256").wrap == (True, True, False)
  assert tt.get_slice("v5e-128").wrap == (False, True, False)


def test_aliases_and_gcloud_names():
  assert tt.get_slice("v5litepod-256") is tt.get_slice("v5e-256")
  assert tt.get_slice(" V5P-128 ").name == "v5p-128"
  assert tt.get_slice("v5e-256").gcloud_accelerator_type == "v5litepod-256"
  assert tt.get_slice("v5p-128").gcloud_accelerator_type == "v5p-128"


def test_unknown_slice_lists_known_names():
  with pytest.raises(ValueError, match=r"unknown TPU topology 'v5p-7'.*v5p-128"):
    tt.get_slice("v5p-7")


def test_cli_prints_one_field_and_rejects_bad_input():
  def cli(*args):
    return subprocess.run([sys.executable, "-m", "reasonir_jax.scale.tpu_topologies", *args],
                          capture_output=True, text=True, timeout=60)
  ok = cli("v5p-128", "hosts")
  assert ok.returncode == 0 and ok.stdout.strip() == "16"
  assert cli("v6e-256", "runtime_version").stdout.strip() == "v2-alpha-tpuv6e"
  bad = cli("v9-8", "hosts")
  assert bad.returncode == 2 and "unknown TPU topology" in bad.stderr
  assert cli("v5p-8", "colour").returncode == 2


def test_old_module_paths_still_work_for_one_release():
  """reasonir_jax.{aot,aot_table,tpu_topologies,host_memory} moved to reasonir_jax.scale: the old
  names are the same modules (monkeypatching either reaches both) and still run with -m."""
  import importlib
  for name in ("aot", "aot_table", "tpu_topologies", "host_memory"):
    with pytest.warns(DeprecationWarning, match=f"reasonir_jax.scale.{name}"):
      sys.modules.pop(f"reasonir_jax.{name}", None)
      old = importlib.import_module(f"reasonir_jax.{name}")
    assert old is importlib.import_module(f"reasonir_jax.scale.{name}")
  out = subprocess.run([sys.executable, "-m", "reasonir_jax.tpu_topologies", "v5p-128", "hosts"],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0 and out.stdout.strip() == "16"
  usage = subprocess.run([sys.executable, "-m", "reasonir_jax.aot", "--help"],
                         capture_output=True, text=True, timeout=60)
  assert usage.returncode == 0 and "--topology" in usage.stdout


def test_the_slice_table_and_peak_flops_import_without_jax():
  """The AOT report sets libtpu's environment before jax is imported, after reading the slice
  table (whose peak FLOP/s come from training/flops.py); launch scripts read it without jax."""
  code = ("import sys; from reasonir_jax.scale import tpu_topologies; "
          "from reasonir_jax.training import flops; "
          "assert 'jax' not in sys.modules, 'jax imported'; "
          "peak = flops.peak_flops_per_device('TPU v5p'); "
          "assert tpu_topologies.CHIPS['v5p'].peak_bf16_flops == peak")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
