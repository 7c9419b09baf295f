"""data_gen's output on gs:// (fake-gcs-server, the real gcsfs client): a run SIGKILLed mid-way
resumes from its local mirror and uploads each input exactly once; the bucket alone lets another
machine finish nothing twice, `coverage` read it, and a different shard count be refused."""
import json
import os
import shutil

from data_gen.cli import main
from data_gen.testing import ScriptedChatServer
from reasonir_jax import paths
from reasonir_jax.data.reader import read_rows
from tests.data_gen.test_datagen_resume import _args, _docs, _responder, killed_mid_run


def test_output_to_gs_killed_then_resumed_is_exactly_once(gcs_emulator, tmp_path, monkeypatch,
                                                         capsys):
  monkeypatch.setenv("REASONIR_CACHE", str(tmp_path / "cache"))
  n = 12
  inp = _docs(tmp_path / "docs.jsonl", n)
  out = f"{gcs_emulator.bucket()}/gen"
  mirror = paths.local_mirror(out, "data_gen")
  ledger = os.path.join(mirror, "_stage", "hq-shard00000of00001", "ledger.jsonl")
  manifest_path = f"{out}/hq-shard00000of00001.manifest.json"
  with ScriptedChatServer(_responder(delay_s=0.05)) as server:
    # The child inherits the emulator's environment and REASONIR_CACHE.
    done_before = killed_mid_run(_args(inp, out, server.base_url, "--max-concurrency", "1"),
                                 ledger, n)
    assert not paths.exists(manifest_path)  # nothing is published before the shard is done
    asked = len(server.requests)
    assert main(_args(inp, out, server.base_url)) == 0
    assert len(server.requests) - asked == n - done_before  # the restart did only the rest
    rows = sorted(r.row_id for r in read_rows(f"{out}/hq-shard*.tfrecord"))
    assert rows == sorted(f"hq/d{i}/0" for i in range(n))  # exactly once, read from the bucket
    manifest = json.loads(paths.read_text(manifest_path))
    assert (manifest["inputs"], manifest["rows"]) == (n, n)
    assert paths.isfile(f"{out}/{manifest['rejects_file']}")
    assert not paths.exists(f"{out}/_stage/hq-shard00000of00001/lock.json")

    # Another machine (no local mirror) with the same command: the bucket's stage says all is
    # done, so nothing is asked again and the output is the same.
    shutil.rmtree(tmp_path / "cache")
    asked = len(server.requests)
    assert main(_args(inp, out, server.base_url)) == 0
    assert len(server.requests) == asked
    assert sorted(r.row_id for r in read_rows(f"{out}/hq-shard*.tfrecord")) == rows
    capsys.readouterr()

    # The coverage check reads the bucket's manifests and ledgers.
    assert main(["coverage", "--input", inp, "--output-dir", out, "--name", "hq"]) == 0
    assert f"{n}/{n} inputs done" in capsys.readouterr().out
    # The bucket holds a 1-shard run: a 2-shard one into it is refused before any request.
    assert main(_args(inp, out, server.base_url, "--num-shards", "2")) == 2
    assert "already holds run 'hq' split into 1 shards" in capsys.readouterr().err
    assert len(server.requests) == asked
    # Ray commits by renames on a shared filesystem: refused, before any cluster starts.
    assert main(_args(inp, out, server.base_url, "--engine", "ray")) == 2
    assert "--engine ray commits each part by a rename" in capsys.readouterr().err
