"""retain_freed_memory: a forward that frees and reallocates the same blocks stops faulting."""
import platform
import resource

import pytest
import torch

from galaxy.runtime.memory import retain_freed_memory


def _faults_of_reallocating(rounds: int = 5) -> int:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        blocks = [torch.ones(1 << 20) for _ in range(4)]  # 4 MiB each: above glibc's default mmap threshold
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_freed_blocks_come_back_without_page_faults():
    assert retain_freed_memory()
    _faults_of_reallocating(8)  # the heap grows to the blocks' size over the first rounds
    assert _faults_of_reallocating() < 200  # 5 rounds x 16 MiB would be ~20000 fresh pages
