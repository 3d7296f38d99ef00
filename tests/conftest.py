import os

import pytest
import torch

# Tests share 2 cores with whatever else runs; one intra-op thread keeps them predictable.
torch.set_num_threads(int(os.environ.get("SPIKEPROP_TEST_THREADS", "1")))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
