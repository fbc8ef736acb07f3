"""Run by test_torchrun.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank feeds its half of a batch through a converted (GlooSyncBatchNorm2d) copy of a
conv + BatchNorm net; outputs, gradients (summed over ranks, as DDP does up to its mean)
and running statistics must equal those of the plain net on the whole batch. Exits
non-zero with the failing comparison otherwise.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from radreport.model.distributed import GlooSyncBatchNorm2d, convert_sync_batchnorm


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same data and weights on every rank
    images = torch.randn(6, 3, 7, 7) * 2.0 + 0.5
    weights = torch.randn(6, 4, 5, 5)  # a loss that is not symmetric in the outputs
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None))
    synced = cast(nn.Sequential, convert_sync_batchnorm(copy.deepcopy(plain),
                                                        torch.device("cpu")))
    assert isinstance(synced[1], GlooSyncBatchNorm2d)
    assert synced.state_dict().keys() == plain.state_dict().keys()

    share = slice(rank * 6 // world, (rank + 1) * 6 // world)
    for _ in range(2):  # twice: the cumulative running statistics too
        for net in (plain, synced):
            net.zero_grad()
        whole = images.clone().requires_grad_()
        expected = plain(whole)
        (expected * weights).sum().backward()
        part = images[share].clone().requires_grad_()
        got = synced(part)
        (got * weights[share]).sum().backward()
        torch.testing.assert_close(got, expected[share], rtol=1e-5, atol=1e-5)
        assert whole.grad is not None and part.grad is not None
        torch.testing.assert_close(part.grad, whole.grad[share], rtol=1e-4, atol=1e-5)
        for (name, p), q in zip(plain.named_parameters(), synced.parameters(), strict=True):
            assert p.grad is not None and q.grad is not None
            summed = q.grad.clone()
            dist.all_reduce(summed)
            torch.testing.assert_close(summed, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for name, buffer in plain[1].named_buffers():
        torch.testing.assert_close(getattr(synced[1], name), buffer, rtol=1e-5, atol=1e-6,
                                   msg=name)
    synced.eval()  # evaluation uses the running statistics, with no collectives
    torch.testing.assert_close(synced(images), plain.eval()(images), rtol=1e-5, atol=1e-5)
    dist.destroy_process_group()
    print(f"rank {rank}: GlooSyncBatchNorm2d matches BatchNorm2d over the global batch")


if __name__ == "__main__":
    main()
