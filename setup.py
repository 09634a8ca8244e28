from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="armhubert",
    version="0.1.0",
    description="ARMHuBERT, ARMwavLM, MaskHuBERT and STaRHuBERT compressed speech encoders for Hugging Face transformers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    py_modules=[
        "configuration_armhubert",
        "modeling_armhubert",
        "pipeline_armhubert",
        "convert_checkpoint",
        "distill_trainer",
    ],
    packages=find_packages(include=["armhubert", "armhubert.*"]),
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "numpy>=1.24",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "pyyaml>=6.0",
        "soundfile>=0.12",
        "soxr>=0.3",
        "accelerate>=1.0",
        "datasets>=3.0",
        "jiwer>=3.0",
    ],
    extras_require={
        # onnx/onnxruntime: scripts/export_onnx.py; matplotlib: benchmark plots.
        "dev": ["pytest>=8.0", "ruff>=0.6", "onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["armhubert-convert=convert_checkpoint:main"]},
)
