"""Benchmark of data_gen's request engine against a loopback OpenAI-compatible server.

    python bench/datagen_engine.py [--docs 1024] [--batch-size 256] [--median-latency 0.5]

The server (data_gen.testing.ScriptedChatServer) answers each chat request after a lognormal
delay (median --median-latency seconds, sigma 0.6: a long tail, like generation lengths of a
served 70B model), answers 10% of first tries with invalid JSON (a validation retry) and 2% of
requests with 503 + Retry-After (an HTTP retry). The same `hq` pipeline runs twice:

- before: the previous engine: one thread-pool `map` per batch with 32 requests in flight,
  each retry round waiting for the whole batch, one batch at a time;
- after: continuous submission: --concurrency requests in flight, each retry re-queued into
  the stream as soon as its answer fails, --batches-in-flight batches at once.

It prints requests/s, the time-weighted mean and the peak of requests in flight, and the wall
time, for both, and their ratios. The server's latency does not grow with load, so this
measures how well the client keeps an engine busy, not the engine.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasonir_jax.llm.backends.openai import OpenAIBackend  # noqa: E402
from reasonir_jax.llm.types import ChatBackend, SamplingParams  # noqa: E402
from data_gen.pipelines.hq import HQPipeline  # noqa: E402
from data_gen.runner import Generation, run_pipeline  # noqa: E402
from data_gen.testing import ScriptedChatServer, last_user_message  # noqa: E402

_QUERY = "A team sees its build slow down after a change; what should they check and why?"


class PoolMapBackend(ChatBackend):
  """The previous engine: `pool.map` over a batch with a fixed number of threads."""

  name = "openai"

  def __init__(self, inner: OpenAIBackend, threads: int):
    self.inner, self.model = inner, inner.model
    self.pool = concurrent.futures.ThreadPoolExecutor(threads)

  def chat(self, conversations, sampling, json_schema=None):
    return list(self.pool.map(lambda c: self.inner.submit(c, sampling, json_schema).result(),
                              conversations))

  def close(self):
    self.pool.shutdown()
    self.inner.close()


def make_responder(median_s: float, seed: int):
  rng, lock, asked = random.Random(seed), threading.Lock(), {}

  def respond(request):
    key = last_user_message(request)[-200:]
    with lock:
      asked[key] = asked.get(key, 0) + 1
      delay = median_s * rng.lognormvariate(0.0, 0.6)
      roll = rng.random()
    if roll < 0.02:
      return ("status", 503, {"Retry-After": "0.5"})
    if asked[key] == 1 and roll < 0.12:
      return ("sleep", delay, "not json at all")
    return ("sleep", delay, json.dumps({"hard_query": [_QUERY]}))

  return respond


def run_once(label: str, docs: list[dict], args, streaming: bool) -> dict:
  with ScriptedChatServer(make_responder(args.median_latency, args.seed)) as server:
    inner = OpenAIBackend(base_url=server.base_url, model="bench",
                          max_concurrency=args.concurrency if streaming else 32, backoff_s=0.2)
    backend = inner if streaming else PoolMapBackend(inner, 32)
    gen = Generation(backend=backend, sampling=SamplingParams(max_tokens=256), max_attempts=3)
    pipeline = HQPipeline(gen, queries_per_doc=1, min_query_words=5)
    with tempfile.TemporaryDirectory() as out:
      start = time.perf_counter()
      inner.meter.reset()
      manifest = run_pipeline(pipeline, docs, out, batch_size=args.batch_size,
                              batches_in_flight=args.batches_in_flight if streaming else 1)
      wall = time.perf_counter() - start
      stats = inner.meter.summary()
    backend.close()
  result = {"label": label, "wall_s": wall, "requests": len(server.requests),
            "requests_per_s": len(server.requests) / wall,
            "mean_in_flight": stats["mean_in_flight"], "peak_in_flight": stats["peak_in_flight"],
            "accepted": manifest["inputs_accepted"], "rejected": manifest["inputs_rejected"]}
  print(f"{label:>7}: {result['requests']} requests in {wall:.1f} s = "
        f"{result['requests_per_s']:.1f} requests/s; in flight mean "
        f"{result['mean_in_flight']:.1f}, peak {result['peak_in_flight']}; "
        f"accepted {result['accepted']}, rejected {result['rejected']}", flush=True)
  return result


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--docs", type=int, default=1024)
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--concurrency", type=int, default=256)
  p.add_argument("--batches-in-flight", type=int, default=2)
  p.add_argument("--median-latency", type=float, default=0.5)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  docs = [{"id": f"d{i:06d}", "text": f"Document {i} about build systems and caching. " * 10}
          for i in range(args.docs)]
  print(f"{args.docs} documents, batch {args.batch_size}, latency median "
        f"{args.median_latency} s (lognormal sigma 0.6)", flush=True)
  before = run_once("before", docs, args, streaming=False)
  after = run_once("after", docs, args, streaming=True)
  print(f"ratio after/before: requests/s x{after['requests_per_s'] / before['requests_per_s']:.2f}"
        f", mean in flight x{after['mean_in_flight'] / max(1e-9, before['mean_in_flight']):.2f}, "
        f"wall time x{after['wall_s'] / before['wall_s']:.2f}")


if __name__ == "__main__":
  main()
