"""Runs `python -m reasonir_jax.scale.aot ARGS` for many ARGS, importing the Python side (jax,
flax, the model: most of a process's start-up) once.

Reads one JSON list of arguments per line on stdin. For each, a child forked from this process
runs `aot.main(argv)` with file descriptors 1 and 2 sent to files, so libtpu's and XLA's own
output is captured too; the driver answers one JSON line {"returncode", "stdout", "stderr"} on
its original stdout. Each child starts libtpu and the backends afresh (none runs here before the
fork): compiles for several topologies in one process can differ slightly from separate runs
(the program size of 2xv5p-8 after v5e-1), forked ones do not. Ends at the end of stdin.
"""
import json
import os
import sys
import tempfile
import traceback


def child(argv, out, err) -> None:
  """In the forked child: `aot.main(argv)` as `python -m` would run it; never returns."""
  os.dup2(out.fileno(), 1)
  os.dup2(err.fileno(), 2)
  code = 1
  try:
    from reasonir_jax.scale import aot
    code = aot.main(argv)
  except SystemExit as e:  # argparse's errors
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not isinstance(e.code, (int, type(None))):
      print(e.code, file=sys.stderr)
  except BaseException:  # noqa: BLE001 - an uncaught error: a traceback and status 1
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def run_one(argv) -> dict:
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      child(argv, out, err)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    return {"returncode": os.waitstatus_to_exitcode(status),
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace")}


def main():
  sys.path[0] = os.getcwd()  # the code of the working directory, as `python -m` imports it
  # As aot.main sets it before jax is imported; the TPU variables it sets are libtpu's, read
  # in each child.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # What every compile imports. Nothing here starts a backend: jax forbids forking after that.
  import jax  # noqa: F401  pylint: disable=unused-import
  from reasonir_jax.model import attention  # noqa: F401  pylint: disable=unused-import
  from reasonir_jax.scale import aot  # noqa: F401  pylint: disable=unused-import
  from reasonir_jax.training import flops, step  # noqa: F401  pylint: disable=unused-import
  answers = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # stray output between requests must not mix with the answers
  for line in sys.stdin:
    if line.strip():
      answers.write(json.dumps(run_one(json.loads(line))) + "\n")
      answers.flush()


if __name__ == "__main__":
  main()
