#!/usr/bin/env python3
"""Calibrate and quantize a trained FP32 classifier without training (post-training quantization)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compressor.app.post_train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
