#!/usr/bin/env python3
"""Calibrate and quantize a trained FP32 classifier without training (post-training quantization)."""

import sys

from compressor.app.post_train import main

if __name__ == "__main__":
    sys.exit(main())
