import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(2)


@pytest.fixture
def tmp_run(tmp_path):
    return tmp_path
