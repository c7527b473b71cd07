"""Fixtures shared by several test files."""
import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and lose a lot when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
