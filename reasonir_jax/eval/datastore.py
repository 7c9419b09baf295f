"""The RAG datastore: passages pooled from a user's corpus files, deduplicated, embedded, cached.

    python -m reasonir_jax.eval.datastore --input corpus_a.jsonl corpus_b.parquet 'dir/*.jsonl' \\
        --out DATASTORE --model RETRIEVER [--pool-questions mmlu.jsonl --pool-k 1000] [--max-length 2048]

The public ReasonIR datastore pools each benchmark's top-1000 documents from a large web datastore,
merges the pools and removes duplicates before embedding them with the retriever (passages up to
2048 tokens; see eval/protocol.py, [DS]). Inputs here are JSON lines or parquet files whose rows
have a text (`text`, `content`, `contents`, `passage` or `retrieval text`) and optionally an `id`,
or retrieval outputs whose rows hold a `ctxs` list of such passages (the pools of the public flow).
Duplicates are passages whose whitespace-normalised text is equal; the first one is kept.
`--pool-questions Q.jsonl --pool-k 1000` then keeps only the passages in some question's top-k
under BM25 (the pooling step, for a corpus much larger than the benchmarks need).

`DATASTORE/passages.jsonl` holds the pooled passages (id, text, source) and
`DATASTORE/datastore.json` the counts; the embeddings go to `DATASTORE/embeddings/`, an
`EmbeddingCache` written in chunks, so a killed build resumes where it stopped and a second run
encodes nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from typing import Sequence

import numpy as np

from reasonir_jax import paths
from reasonir_jax.eval import bright_data, cache, retrieval

log = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "content", "contents", "passage", "retrieval text")
PASSAGES = "passages.jsonl"


def expand_inputs(inputs: Sequence[str]) -> list[str]:
  """Files, directories (their *.jsonl and *.parquet files) and glob patterns, in order."""
  files = []
  for item in inputs:
    try:
      found = paths.expand([item], dir_extensions=("jsonl", "parquet"))
    except FileNotFoundError:
      found = []
    found = [p for p in found if p.endswith((".jsonl", ".json", ".parquet"))]
    if not found or not all(paths.isfile(p) for p in found):
      raise FileNotFoundError(f"--input {item}: no JSON-lines or parquet file found")
    files.extend(found)
  return files


def _text_of(row: dict, where: str) -> str:
  for name in TEXT_FIELDS:
    if name in row and row[name] is not None:
      text = row[name]
      if isinstance(row.get("title"), str) and row["title"] and name != "retrieval text":
        text = f"{row['title']}\n{text}"
      return str(text)
  raise KeyError(f"{where}: no passage text (fields {', '.join(TEXT_FIELDS)}); has {sorted(row)}")


def dedup_key(text: str) -> str:
  return hashlib.sha1(" ".join(text.split()).encode("utf-8", "surrogatepass")).hexdigest()


def pool_passages(paths: Sequence[str], dedup: bool = True) -> tuple[list[dict], dict]:
  """Rows {id, text, source} from every file, duplicates removed; and the counts."""
  out, seen_text, seen_id = [], set(), {}
  read = dropped = 0
  for path in paths:
    for n, row in enumerate(bright_data.read_rows([path]), 1):
      pooled = isinstance(row.get("ctxs"), list)  # a retrieval output: pool its passages
      items = row["ctxs"] if pooled else [row]
      for j, item in enumerate(items):
        where = f"{path}: row {n}" + (f" ctxs[{j}]" if pooled else "")
        text = _text_of(item, where)
        read += 1
        key = dedup_key(text)
        if dedup and key in seen_text:
          dropped += 1
          continue
        seen_text.add(key)
        pid = str(item.get("id", item.get("_id", ""))) or f"{os.path.basename(path)}:{n}:{j}"
        if pid in seen_id and seen_id[pid] != key:
          pid = f"{pid}#{len(out)}"  # the same id for another text: keep both, distinguishable
        seen_id[pid] = key
        out.append({"id": pid, "text": text, "source": os.path.basename(path)})
  if not out:
    raise ValueError(f"--input: no passages in {', '.join(paths)}")
  return out, {"files": len(paths), "passages_read": read, "duplicates_removed": dropped,
               "passages": len(out)}


def pool_top_k(rows: Sequence[dict], question_files: Sequence[str], k: int) -> list[dict]:
  """The passages among the top-k of some question, in their original order.

  The public pools are each benchmark question's top-1000 from a web-scale datastore under a cheap
  first-stage retriever (Contriever there); here the first stage is BM25 over the pooled files,
  and the questions are read like `rag --data` (MMLU or GPQA rows), options included."""
  from reasonir_jax.eval import rag
  from reasonir_jax.eval.bm25 import BM25Index
  queries = [rag.retrieval_query(q) for path in question_files for q in rag.load_questions(path, "pool")]
  scores, idx = BM25Index([r["text"] for r in rows]).search(queries, k)
  keep = sorted({int(i) for s_k, i_k in zip(scores, idx) for s, i in zip(s_k, i_k) if s > 0 and i >= 0})
  log.info("top-%d pooling for %d questions: %d of %d passages kept", k, len(queries), len(keep), len(rows))
  return [rows[i] for i in keep]


class Datastore:
  """Pooled passages plus their embedding cache under one directory."""

  def __init__(self, directory: str, ids: list[str], texts: list[str]):
    self.dir, self.ids, self.texts = directory, ids, texts

  @classmethod
  def build(cls, inputs: Sequence[str], out_dir: str, dedup: bool = True,
            pool_questions: Sequence[str] = (), pool_k: int = 1000) -> "Datastore":
    rows, stats = pool_passages(expand_inputs(inputs), dedup)
    if pool_questions:
      rows = pool_top_k(rows, pool_questions, pool_k)
      stats |= {"pool_k": pool_k, "pool_questions": list(pool_questions), "passages": len(rows)}
    os.makedirs(out_dir, exist_ok=True)
    bright_data.write_jsonl(os.path.join(out_dir, PASSAGES), rows)
    with open(os.path.join(out_dir, "datastore.json"), "w") as f:
      json.dump(stats | {"inputs": list(inputs)}, f, indent=1)
    log.info("datastore %s: %d passages from %d files (%d duplicates removed)", out_dir, stats["passages"],
             stats["files"], stats["duplicates_removed"])
    return cls(out_dir, [r["id"] for r in rows], [r["text"] for r in rows])

  @classmethod
  def load(cls, directory: str) -> "Datastore":
    """A built datastore, or a directory of corpus files pooled on the fly (nothing written but
    the embedding cache)."""
    path = os.path.join(directory, PASSAGES)
    if os.path.isfile(path):
      rows = bright_data.read_rows([path])
    elif os.path.isdir(directory):
      rows, _ = pool_passages(expand_inputs([directory]))
    else:
      raise FileNotFoundError(f"--datastore {directory}: not a directory (build one with "
                              "`python -m reasonir_jax.eval.datastore --input FILES --out DIR`)")
    return cls(directory, [str(r["id"]) for r in rows], [str(r["text"]) for r in rows])

  def embeddings(self, encoder, model_key: str, *, max_length: int = 2048, batch_size: int = 32,
                 cache_dir: str = "", chunk_size: int = 8192,
                 cache_dtype: str = cache.DEFAULT_STORAGE_DTYPE) -> cache.ChunkedEmbeddings:
    """Document embeddings (no instruction), from the cache or encoded into it (resumable)."""
    key = cache.document_key(model_key, cache.corpus_fingerprint(self.ids, self.texts),
                             max_length, encoder)
    store = cache.EmbeddingCache(cache_dir or os.path.join(self.dir, "embeddings"), key,
                                 chunk_size=chunk_size, name=f"datastore-{max_length}", storage_dtype=cache_dtype)
    return store.get_or_encode(self.texts, lambda t: encoder.encode(
        list(t), instruction=None, batch_size=batch_size, max_length=max_length, show_progress=False))

  def search(self, encoder, model_key: str, queries: Sequence[str], k: int, *, instruction: str,
             max_length: int = 2048, batch_size: int = 32, cache_dir: str = "",
             cache_dtype: str = cache.DEFAULT_STORAGE_DTYPE) -> list[list[int]]:
    """Row indices of the top-k passages of each query, best first."""
    emb = self.embeddings(encoder, model_key, max_length=max_length, batch_size=batch_size,
                          cache_dir=cache_dir, cache_dtype=cache_dtype)
    q_emb = encoder.encode(list(queries), instruction=instruction, batch_size=batch_size,
                           max_length=max_length)
    _, idx = retrieval.exact_top_k(np.asarray(q_emb), emb, min(k, len(self.ids)),
                                   mesh=getattr(encoder, "mesh", None))
    return [[int(i) for i in row if i >= 0] for row in idx]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", nargs="+", required=True, help="corpus files, directories or globs")
  parser.add_argument("--out", required=True, help="datastore directory")
  parser.add_argument("--model", default="", help="retriever (HF directory or workdir); omit to pool only")
  parser.add_argument("--no-dedup", action="store_true", help="keep duplicate passages")
  parser.add_argument("--pool-questions", nargs="*", default=[],
                      help="question files (as rag --data): keep only each question's top --pool-k passages")
  parser.add_argument("--pool-k", type=int, default=1000, help="passages pooled per question (public: 1000)")
  parser.add_argument("--max-length", type=int, default=2048, help="passage token limit (public: 2048)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--mesh", default="auto", help="device mesh data,fsdp,tensor, or auto")
  cache.add_dtype_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    store = Datastore.build(args.input, args.out, dedup=not args.no_dedup, pool_questions=args.pool_questions,
                            pool_k=args.pool_k)
    model_key = cache.model_fingerprint(args.model) if args.model else None
  except (ValueError, KeyError, FileNotFoundError) as e:
    parser.error(str(e))
  if args.model:
    from reasonir_jax.eval.bright import load_encoder
    encoder = load_encoder(args.model, args.dtype, args.mesh)
    emb = store.embeddings(encoder, model_key, max_length=args.max_length, batch_size=args.batch_size,
                           cache_dtype=args.cache_dtype)
    log.info("datastore %s: %d embeddings of dim %d", args.out, len(emb), emb.dim)
  with open(os.path.join(args.out, "datastore.json")) as f:
    stats = json.load(f)
  print(f"datastore {args.out}: {stats['passages']} passages ({stats['duplicates_removed']} duplicates "
        f"removed) from {stats['files']} files")
  return stats


if __name__ == "__main__":
  main()
