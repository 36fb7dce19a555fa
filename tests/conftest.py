import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory):
    """A small built-in dataset shared by the tests that only read it."""
    from sskd_ray.data.builtin import build_builtin_dataset

    return build_builtin_dataset(tmp_path_factory.mktemp("fashion"), num_train=24, num_val=8, size=64,
                                 seed=0, labeled_fraction=0.25)
