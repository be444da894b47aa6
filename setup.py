from pathlib import Path

from setuptools import find_packages, setup

# What the Trainer-based scripts import (run_audio_classification.py, and run_sed.py: its argument parsing reads
# transformers' TrainingArguments, which needs accelerate, and htsat_hf.training's metrics need datasets and evaluate).
TRAINER = ["datasets>=4", "accelerate>=1.0", "evaluate>=0.4"]

setup(
    name="htsat-hf",
    version="0.1.0",
    description="HTS-AT (Hierarchical Token-Semantic Audio Transformer) as a Hugging Face transformers model",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"htsat_hf": ["data/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "numpy>=1.24",
        "scipy",
    ],
    extras_require={
        # File decoding and resampling in datasets and the pipeline's dict inputs.
        "audio": ["torchaudio", "torchcodec", "datasets>=4", "soundfile"],
        "train": [*TRAINER, "scikit-learn", "h5py"],
        # run_sed.py (detection, --score_only, fine-tuning): detection metrics as DCASE computes them, tables (pandas),
        # plots, and what its Trainer-based wiring imports; sed_eval's dcase_util needs pkg_resources (setuptools < 81).
        "sed": [
            "scipy", "pandas", "sed_scores_eval==0.0.4", "sed_eval>=0.2.1", "psds_eval==0.5.3", "setuptools<81",
            "matplotlib", *TRAINER,
        ],
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript"],
        "test": ["pytest", "librosa>=0.10", "soundfile", "scipy"],
    },
    entry_points={"console_scripts": ["htsat-hf=htsat_hf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Analysis",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
