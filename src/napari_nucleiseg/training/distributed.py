"""Training on several processes or machines: the same ``nucleiseg train`` under ``torchrun``.

``torchrun --nproc_per_node N -m napari_nucleiseg.cli.main train …`` (or ``--nnodes`` with a
rendezvous address for several machines) sets ``WORLD_SIZE``, ``RANK`` and the rendezvous in
the environment; :func:`setup` then joins the process group (gloo on CPUs, nccl when every rank
has a GPU) and the trainer wraps its network in DistributedDataParallel. Each rank draws its own
patches (its rank is part of the sampler's seed), gradients are averaged every step, so all
ranks hold the same weights throughout; rank 0 alone writes checkpoints, logs and validation.
Without ``torchrun`` nothing changes: one process, the same patches as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Distributed:
    world_size: int = 1
    rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes (checkpoints, logs): rank 0, or the only one."""
        return self.rank == 0


def setup(timeout_s: float | None = None) -> Distributed:
    """Join the process group ``torchrun`` described in the environment, if any.
    ``timeout_s``: how long a collective (a barrier) may wait, when longer than torch's default
    (30 minutes): ranks that wait while rank 0 works alone (retraining's pseudo-labels)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if timeout_s is None:
            dist.init_process_group(backend=backend)
        else:
            from datetime import timedelta

            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return Distributed(dist.get_world_size(), dist.get_rank())


def wrap(model, run: Distributed):
    """``model`` in DistributedDataParallel when several processes train, else itself."""
    if not run.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def unwrap(model):
    return getattr(model, "module", model)


def sync_buffers(model, run: Distributed) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. DistributedDataParallel
    averages gradients, so parameters agree, and it broadcasts rank 0's buffers before each
    forward pass; after the last pass each rank holds its own batch's statistics until this."""
    if not run.active:
        return
    import torch.distributed as dist

    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, 0)


def barrier(run: Distributed) -> None:
    if run.active:
        import torch.distributed as dist

        dist.barrier()


def teardown(run: Distributed) -> None:
    if run.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
