"""How a batch splits into groups, and how many compute workers it can use (see :mod:`rvcfast.batch`,
point 5 of its docstring): shared by the batch runner, ``rvcfast tune`` and ``rvcfast bench``."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["group_is_full", "split_groups", "usable_workers"]


def group_is_full(files: int, samples: int, batch_samples: int) -> bool:
    """Whether a group of ``files`` holding ``samples`` padded 16 kHz samples takes no more files:
    files join a group until it holds ``batch_samples`` (a group holds at least one file)."""
    return files > 0 and samples >= batch_samples


def split_groups(padded_lengths: Sequence[int], batch_samples: int) -> list[list[int]]:
    """The groups (their files' padded 16 kHz lengths) a batch of inputs with these lengths is sent in."""
    groups: list[list[int]] = []
    for n in padded_lengths:
        if not groups or group_is_full(len(groups[-1]), sum(groups[-1]), batch_samples):
            groups.append([])
        groups[-1].append(int(n))
    return groups


def usable_workers(requested: int, n_files: int, device_type: str) -> int:
    """How many compute workers a batch really gets: no more than its files, and on a CPU
    the largest divisor of torch's thread count not above ``requested`` (each worker gets an
    equal share of at least one thread); one where torch's threads are not OpenMP's (a shared
    pool whose size cannot be split per thread)."""
    n = max(1, min(int(requested), n_files))
    if n == 1 or device_type != "cpu":
        return n
    import torch

    from .runtime import openmp_threads

    if not openmp_threads():
        return 1
    threads = torch.get_num_threads()
    return max(d for d in range(1, min(n, threads) + 1) if threads % d == 0)
