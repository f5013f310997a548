"""Fixtures shared by the paper tests."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, as the notebooks use (tiny models on a shared 2-core CPU
    crawl with two OpenMP threads); the previous count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
