"""The trainer on several processes: torchrun launches one per device, each
joins PyTorch's process group and trains its rows of the same global batch.

    torchrun --nproc_per_node 2 -m axw.train --data my.txt --out runs/m ...

`Ranks` says where this process stands (rank, world size, FSDP or DDP).
`process_group()` joins torchrun's group for the length of a run (gloo for
CPU tensors, nccl for CUDA ones, one device per local rank). `wrap` hands
the model to DistributedDataParallel, or shards it with FSDP2's
`fully_shard` per decoder layer and on the whole network. Every rank checks
the arguments and `agree` raises the first error found on every rank, before
any compute; rank 0 alone writes (`on_main_first`, `gather_checkpoint`).
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# what torchrun sets in each process it starts
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = "launch with torchrun, e.g. torchrun --nproc_per_node 2 -m axw.train ..."


class TrainingStopped(RuntimeError):
    """A rank stopped the run (it died, or lost contact with one that did)."""


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the model is wrapped: several ranks, or FSDP on any number."""
        return self.world > 1 or self.fsdp

    def device(self, device: str) -> torch.device:
        """`device` ('cpu' or 'cuda'); under torchrun CUDA means this local rank's GPU."""
        device = torch.device(device)
        if device.type == "cuda" and dist.is_initialized():
            return torch.device("cuda", self.local_rank)
        return device

    def rows(self, global_rows: int) -> slice:
        """This rank's rows of a global batch."""
        per_rank = global_rows // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def current_ranks(fsdp: bool = False) -> Ranks:
    """Where this process stands in the process group it joined (one process alone when none)."""
    if not dist.is_initialized():
        return Ranks(fsdp=fsdp)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, fsdp)


@contextmanager
def process_group():
    """Join torchrun's process group for the block, unless this process
    joined one already (then it stays); yields `current_ranks()`."""
    if dist.is_initialized() or not launched_by_torchrun():
        yield current_ranks()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "cpu:gloo,cuda:nccl"  # control messages on the CPU, gradients on the GPU
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield current_ranks()
    finally:
        dist.destroy_process_group()


def check_ranks(ranks: Ranks, batch_size: int, grad_accum: int, device: str):
    """ValueError unless a run of `batch_size` rows a step, in `grad_accum`
    micro-batches per rank, can be split over `ranks`."""
    if ranks.fsdp and not dist.is_initialized():
        raise ValueError(f"fsdp shards the model across the ranks of a process group and there is none: {LAUNCH_HINT}")
    if batch_size % (ranks.world * grad_accum):
        per = f"the world size ({ranks.world})" if grad_accum == 1 else \
            f"world size x grad_accum ({ranks.world} x {grad_accum} = {ranks.world * grad_accum})"
        raise ValueError(f"batch_size ({batch_size}) is the global batch: it must be a multiple of {per}, "
                         "so that every rank reads as many rows in as many micro-batches")
    if ranks.world > 1 and torch.device(device).type == "cuda" and torch.device(device).index is not None:
        raise ValueError(f"device {device!r}: under torchrun each rank uses the GPU of its local rank; "
                         "pass 'cuda'")


def agree(ranks: Ranks, error: Exception | None):
    """Raise, on every rank, the ValueError that the lowest failing rank
    met (the others' name that rank); return when no rank met one. Every
    rank must call it: it is also a barrier."""
    if not dist.is_initialized() or ranks.world == 1:
        if error is not None:
            raise error
        return
    first = torch.tensor([ranks.rank if error is not None else ranks.world])
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    first = int(first)
    if first == ranks.world:
        return
    text = broadcast_text(str(error) if ranks.rank == first else "", first)
    if ranks.rank == first:
        raise error
    raise ValueError(f"rank {first}: {text}")


def broadcast_text(text: str, src: int) -> str:
    """`text` of rank `src`, on every rank (as bytes: nothing is pickled)."""
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
    size = torch.tensor([data.numel()])
    dist.broadcast(size, src)
    if dist.get_rank() != src:
        data = torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(data, src)
    return bytes(data.tolist()).decode("utf-8")


def checked(ranks: Ranks, check):
    """`check()` on every rank; a ValueError on any rank raises on all."""
    result, error = None, None
    try:
        result = check()
    except ValueError as e:
        error = e
    agree(ranks, error)
    return result


def on_main_first(ranks: Ranks, step):
    """`step()` on rank 0, then on the others: for steps that may write
    (finishing a checkpoint save cut short) before the others read."""
    nothing = lambda: None  # noqa: E731
    first = checked(ranks, step if ranks.is_main else nothing)
    then = checked(ranks, nothing if ranks.is_main else step)
    return first if ranks.is_main else then


def same_on_every_rank(ranks: Ranks, text: str) -> bool:
    """Whether every rank holds the same `text` (compared by a hash)."""
    if ranks.world == 1:
        return True
    import hashlib

    digest = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:7], "big")
    low_high = torch.tensor([digest, -digest], dtype=torch.int64)
    dist.all_reduce(low_high, op=dist.ReduceOp.MIN)
    return int(low_high[0]) == -int(low_high[1])


def any_rank(ranks: Ranks, flag: bool) -> bool:
    """True on every rank when `flag` is on any."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def mean_over_ranks(ranks: Ranks, value: Tensor) -> Tensor:
    """The mean of a scalar over the ranks, summed then divided (not gloo's AVG)."""
    if not ranks.distributed:
        return value
    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total[0] / ranks.world


def whole(tensor: Tensor) -> Tensor:
    """A DTensor's whole value on every rank (a plain tensor as is)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def check_same_weights(model, ranks: Ranks):
    """ValueError on every rank unless every rank holds the same weights:
    FSDP shards each rank's own copy (DDP would copy rank 0's)."""
    with torch.no_grad():
        total = sum(t.double().sum() for t in model.net.state_dict().values())
    low_high = torch.tensor([total, -total], dtype=torch.float64)
    dist.all_reduce(low_high, op=dist.ReduceOp.MIN)
    if low_high[0] != -low_high[1]:
        raise ValueError("the ranks hold different weights: build the model the same way on every rank "
                         "(the same seed, or the same checkpoint) before training it with fsdp")


def _fsdp_groups(net) -> list[list]:
    """One FSDP unit per decoder layer: its norms, attention and feed-forward
    (the Decoder calls them one by one, so they are sharded as a group)."""
    groups = []
    for block in net.attn_layers.layers:
        parts = (block.attn_norm, block.attn, block.attn_post_norm, block.ff_norm, block.ff, block.ff_post_norm)
        groups.append([m for m in parts if m is not None])
    return groups


def wrap(model, ranks: Ranks, device: torch.device):
    """What the training steps call: `model` itself (one process), its DDP
    wrapper, or `model` with `model.net` sharded in place by FSDP2."""
    if not ranks.distributed:
        return model
    if not ranks.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        # no batch-norm-like buffers to keep in step, so no broadcast of buffers per forward
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       forward_sync_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    check_same_weights(model, ranks)
    mesh = init_device_mesh(device.type, (ranks.world,))
    for group in _fsdp_groups(model.net):
        fully_shard(group, mesh=mesh)
    fully_shard(model.net, mesh=mesh)
    if device.type == "cpu":
        # gloo: reduce by SUM and divide, rather than trust its AVG (pytorch #162338)
        for module in model.net.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
    # the attention returns a view, which the decoder only ever adds out of place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return model


def no_sync(engine, model, ranks: Ranks, last: bool):
    """Hold back the gradient reduction on all micro-batches but the last."""
    if not ranks.distributed:
        return nullcontext()
    if not ranks.fsdp:
        return nullcontext() if last else engine.no_sync()
    model.net.set_requires_gradient_sync(last)
    return nullcontext()


def place_moment(p: Tensor, value: Tensor) -> Tensor:
    """A saved optimizer moment (the whole tensor) as parameter `p` holds it: its shard under FSDP."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    value = value.to(p.device)
    if isinstance(p, DTensor):
        # every rank read the whole tensor: each keeps its shard, no communication
        return distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
    return value


def gather_checkpoint(model, optimizer, ranks: Ranks) -> tuple[dict | None, dict | None]:
    """Under FSDP, (weights, optimizer tensors) gathered whole on rank 0's CPU
    (every rank must call it; the others get empty dicts); else (None, None):
    the model holds them whole already."""
    if not ranks.fsdp:
        return None, None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors = {}
    for name, p in model.net.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            whole = value.full_tensor() if hasattr(value, "full_tensor") else torch.as_tensor(value)
            if ranks.is_main:
                tensors[f"{name}.{key}"] = whole.detach().cpu().contiguous()
    return weights, tensors


def seed_dropout(seed: int, step: int, ranks: Ranks):
    """Under torchrun, dropout draws from a stream of (seed, step, rank): each
    rank its own masks, and a resumed run at the same world size the same ones."""
    if ranks.distributed:
        torch.manual_seed(((seed * 1_000_003 + step) * 1_000_003 + ranks.rank) * 2 + 1)

