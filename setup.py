from setuptools import find_packages, setup

setup(
    name="compressor",
    version="0.1.0",
    description="YAML-driven model-compression scheduler for PyTorch, focused on quantization",
    packages=find_packages(include=["compressor", "compressor.*"]),
    # the one-pass CPU fake-quantization kernel's source, compiled on first use (compressor/quantization/cpu_kernel.py)
    package_data={"compressor.quantization": ["csrc/*.cpp"]},
    python_requires=">=3.10",
    # The torch/torchvision pair is pinned: it is the tested pair, and torchvision
    # only works with the torch build it was compiled against.
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "pyyaml>=6.0",
        "tabulate>=0.9",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "scikit-learn>=1.3",  # ships the embedded digits dataset (load_digits)
        "numpy",
        "scipy>=1.10",  # LAPQ's joint clipping search (scipy.optimize.minimize, Powell), as Distiller's --qe-lapq
        "onnx>=1.15",  # QDQ export (deployment)
        "onnxruntime>=1.17",  # runs the export on integer kernels; the equivalence check after each export
        "matplotlib>=3.7",  # compare --plot and the post-training pictures (PNG); pulls no torch
        "ninja>=1.11",  # builds the one-pass CPU fake-quantization kernel (torch.utils.cpp_extension needs it)
    ],
    # hypothesis: the recipe/stats-file fuzz tests; ruff: the lint step of .ci/run
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "ruff>=0.5"]},
    # The apps/ scripts stay for Distiller users; installed, the same mains are these commands,
    # and `compressor compare` compares run folders.
    entry_points={"console_scripts": [
        "compress-classifier = compressor.app.classifier:main",
        "post-train-quant = compressor.app.post_train:main",
        "compressor = compressor.cli:main",
    ]},
)
