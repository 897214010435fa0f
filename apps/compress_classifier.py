#!/usr/bin/env python3
"""Train, fine-tune or evaluate an image classifier under a compression recipe (Distiller's command line)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compressor.app.classifier import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
