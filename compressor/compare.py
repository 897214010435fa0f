"""``python -m compressor.compare RUN_DIR...``: the same as the ``compressor compare`` command."""

import sys

from compressor.app.compare import main

if __name__ == "__main__":
    sys.exit(main())
