#!/usr/bin/env python3
"""Train, fine-tune or evaluate an image classifier under a compression recipe (Distiller's command line)."""

import sys

from compressor.app.classifier import main

if __name__ == "__main__":
    sys.exit(main())
