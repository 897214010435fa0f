import os

import pytest
import torch

# compressor is imported as installed (pip install -e .), or from PYTHONPATH in a worktree: no sys.path edits.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def root():
    return ROOT
