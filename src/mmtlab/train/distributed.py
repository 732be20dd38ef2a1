"""Data parallelism from outside the model: process groups, replicating (ddp) or sharding (fsdp) the
model, and the collectives that objectives and the loop need.

Objectives call model methods directly (`model.encode_image`, `model(images=..., tokens=...)`,
`model.mlm_logits`, `model.contrastive.scale()`), often with several forward passes per backward.
The classic `DistributedDataParallel` wrapper synchronises only gradients of graphs built through
its own `forward`: `ddp.module.encode_image(...)` leaves gradients unsynchronised without an error,
and several forwards per backward need extra care. So neither mode here depends on which methods
built the graph:

- ddp: every process holds the whole model. `GradientSync` all-reduces gradients in buckets from
  post-accumulate-grad hooks, which fire once per parameter per backward whichever forward passes
  and methods produced the graph. Buckets are launched in a fixed order (a bucket goes when it and
  every bucket before it are complete) on their own process group, so all ranks issue the same
  collectives in the same order; whatever is still pending when backward ends is launched by
  `finish()`. A parameter no rank produced a gradient for keeps `grad = None`, as in one process.
- fsdp: FSDP2 `fully_shard` on every transformer block and on the root. Its per-module hooks fire
  on every call of a block, from any model method, and reduce-scatter the block's gradients in
  backward. The root's own parameters (embeddings, norms, heads) are all-gathered at the start of
  each micro-step, so methods that read them outside a forward (`mlm_logits`, `scale()`) see full
  tensors. FSDP2 cannot shard 0-d parameters (the logit scale): those stay replicated and are
  synchronised by `GradientSync`, as in ddp. Every rank must run the same forward passes (each
  one all-gathers): objectives choose passes by config, never by data, so they do.

Contrastive losses gather embeddings with gradients (`all_gather_with_grad`: open_clip's
gather_with_grad + local loss, on torch.distributed.nn's differentiable all_gather). Each rank's
local loss uses every rank's embeddings and the backward sums the gathered gradients back to their
owners, so the mean of the local losses has the single-process gradient of the global batch.
tests/test_distributed.py checks all of this against one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn

from mmtlab.config import TrainConfig
from mmtlab.train.blocks import transformer_blocks


@dataclass
class DataParallel:
    """This process's place in data-parallel training; `world == 1` is a plain single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # setup() created the process group, so close() destroys it

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_with_grad(self, x: Tensor) -> tuple[Tensor, int]:
        """Every rank's `x` concatenated along dim 0 (ranks may hold different numbers of rows),
        and the row where this rank's part starts. Gradients flow back to each rank's own rows."""
        if not self.distributed:
            return x, 0
        sizes = torch.tensor([x.shape[0]], device=x.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
        # Differentiable all-gather from torch.distributed.nn: its backward sends each rank the
        # gradients of its own rows from every rank and sums them. Rows are padded to the largest
        # part, since the collective needs equal shapes.
        padded = torch.cat([x, x.new_zeros((max(counts) - x.shape[0], *x.shape[1:]))])
        parts = dist_nn.all_gather(padded)
        return torch.cat([p[:n] for p, n in zip(parts, counts)]), sum(counts[: self.rank])

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (for logging)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (a stop request must stop all ranks together)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self, barrier: bool = True) -> None:
        """Leave the process group we created. After a normal end every rank first waits for the
        others: a rank that tore down its gloo group while another still used it sometimes
        aborted the whole run ("terminate called without an active exception") after training."""
        if self.owns_group and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()


def setup(device: torch.device | None = None) -> DataParallel:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), or
    use one the caller initialised; without either this is a single process."""
    cuda = torch.cuda.is_available()
    owns = False
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DataParallel(device=device or torch.device("cuda" if cuda else "cpu"))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # gloo for CPU tensors as well, so small CPU-side collectives work next to nccl
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
        owns = True
    world, rank = dist.get_world_size(), dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device is None:
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DataParallel(rank=rank, world=world, local_rank=local_rank, device=device, owns_group=owns)


class GradientSync:
    """Average the gradients of `params` over ranks: what DDP does, without wrapping the model.

    Call `arm()` before the backward whose gradients should be synchronised (the last micro-step:
    earlier ones accumulate locally, like `no_sync`) and `finish()` after it.
    """

    def __init__(self, params: list[nn.Parameter], world: int, bucket_mb: float = 25.0):
        self.world = world
        self.group = dist.new_group()  # its own group: never interleaves with other collectives
        self.params = [p for p in params if p.requires_grad]
        self.buckets: list[list[nn.Parameter]] = []
        size, limit = 0, int(bucket_mb * 2**20)
        for p in reversed(self.params):  # roughly the order backward produces gradients
            nbytes = p.numel() * p.element_size()
            b = self.buckets[-1] if self.buckets else None
            if b is None or size + nbytes > limit or b[0].dtype != p.dtype or b[0].device != p.device:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        self.armed = False
        self._ready: list[set[int]] = []
        self._next = 0
        self._launched: list[tuple[int, Tensor, Any]] = []
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad)

    def arm(self) -> None:
        self.armed = True
        self._ready = [set() for _ in self.buckets]
        self._next = 0
        self._launched = []

    def _on_grad(self, p: nn.Parameter) -> None:
        if not self.armed:
            return
        i = self.bucket_of[p]
        self._ready[i].add(id(p))
        while self._next < len(self.buckets) and len(self._ready[self._next]) == len(self.buckets[self._next]):
            self._launch(self._next)

    def _launch(self, i: int) -> None:
        bucket = self.buckets[i]
        ref = bucket[0]
        # One flat tensor per bucket: the gradients, then one presence flag per parameter.
        parts = [p.grad.reshape(-1) if p.grad is not None else ref.new_zeros(p.numel()) for p in bucket]
        parts.append(torch.tensor([p.grad is not None for p in bucket], dtype=ref.dtype, device=ref.device))
        flat = torch.cat(parts)
        work = dist.all_reduce(flat, group=self.group, async_op=True)
        self._launched.append((i, flat, work))
        self._next = i + 1

    def finish(self) -> None:
        if not self.armed:
            return
        while self._next < len(self.buckets):
            self._launch(self._next)
        for i, flat, work in self._launched:
            work.wait()
            bucket = self.buckets[i]
            present = flat[-len(bucket) :]
            offset = 0
            for p, has in zip(bucket, present.tolist()):
                n = p.numel()
                if has:  # some rank has a gradient: every rank takes the mean (absent ones count as 0)
                    g = flat[offset : offset + n].view_as(p).div_(self.world)
                    if p.grad is None:
                        p.grad = g.clone()
                    else:
                        p.grad.copy_(g)
                offset += n
        self.armed = False
        self._launched = []


class Parallel:
    """What a training step does around forward and backward for one way of parallelising.

    Single process: nothing, and clipping is torch's own (the loop's behaviour is unchanged).
    """

    def __init__(self, model: nn.Module, sync: GradientSync | None = None, sharded: bool = False):
        self.model, self.sync, self.sharded = model, sync, sharded

    def begin_micro_step(self, last: bool) -> None:
        """Before a micro-step's forward; `last`: its backward completes the step's gradients."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last)
            self.model.unshard()  # the root's parameters, for methods that read them outside a forward
        if self.sync is not None and last:
            self.sync.arm()

    def end_backward(self) -> None:
        """After the last micro-step's backward: gradients are then the same on every rank."""
        if self.sync is not None:
            self.sync.finish()

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        if not self.sharded:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return _clip_sharded(list(self.model.parameters()), max_norm)


def _clip_sharded(params: list[nn.Parameter], max_norm: float) -> Tensor:
    """clip_grad_norm_ for a mix of sharded (DTensor) gradients and replicated ones."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    device = local[0].device if local else torch.device("cpu")
    sharded_sq = torch.zeros((), device=device)
    replicated_sq = torch.zeros((), device=device)
    for g, lg in zip(grads, local):
        sq = lg.float().pow(2).sum()
        if isinstance(g, DTensor):
            sharded_sq += sq
        else:
            replicated_sq += sq  # the same on every rank: counted once
    dist.all_reduce(sharded_sq)
    total = (sharded_sq + replicated_sq).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for lg in local:
        lg.mul_(coef.to(lg.dtype))
    return total


def parallelize(model: nn.Module, dp: DataParallel, cfg: TrainConfig) -> Parallel:
    """Replicate (ddp) or shard (fsdp) `model` across the ranks of `dp`, in place. Call it before
    building the optimizer (FSDP2 replaces parameters with sharded ones)."""
    if not dp.distributed:
        return Parallel(model)
    if cfg.data_parallel == "ddp":
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)  # same start on every rank, whatever each rank loaded
        return Parallel(model, GradientSync(list(model.parameters()), dp.world))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dp.device.type, (dp.world,))
    scalars = {p for p in model.parameters() if p.ndim == 0}  # FSDP2 cannot shard 0-d tensors
    # bf16: blocks all-gather and compute in bf16 and reduce gradients in fp32; the root (embeddings,
    # norms, heads, logit scale) keeps fp32 parameters, autocast handles its matmuls.
    block_mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if cfg.precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=block_mp, ignored_params=scalars & set(block.parameters()) or None)
    fully_shard(model, mesh=mesh, ignored_params=scalars or None)
    sync = GradientSync(sorted(scalars, key=_param_order(model)), dp.world) if scalars else None
    return Parallel(model, sync, sharded=True)


def _param_order(model: nn.Module):
    index = {id(p): i for i, p in enumerate(model.parameters())}
    return lambda p: index[id(p)]


def _run_rank(fn, rank: int, world: int, port: int, threads: int | None, args: tuple, results) -> None:
    import pickle
    import traceback

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if threads:
        torch.set_num_threads(threads)
    try:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(rank)
        store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False)
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", store=store, rank=rank, world_size=world)
        # plain pickle: torch's queue would share tensors through file descriptors that die with us
        results.put((rank, True, pickle.dumps(fn(*args))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch_local(fn, world: int, *args, threads: int | None = None, timeout: float = 600.0) -> list:
    """Run `fn(*args)` in `world` new processes on this machine, each already in the process group
    (gloo; nccl too with CUDA) and with torchrun's RANK, WORLD_SIZE, LOCAL_RANK, and return each
    rank's result. For tests and benchmarks; clusters use torchrun. `fn` must be importable (module
    level). The ranks meet at a store this process holds on a port the OS picked: no port is
    chosen, released and bound again, so parallel launches on one machine cannot collide."""
    import pickle
    import queue
    import time

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False)
    procs = [
        ctx.Process(target=_run_rank, args=(fn, r, world, store.port, threads, args, results), daemon=False)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0) and i not in out]
                if dead:
                    raise RuntimeError(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"launch_local: no result after {timeout:.0f} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            out[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=30 if len(out) == world else 0.1)
            if p.is_alive():
                p.terminate()
                p.join()
    return [out[r] for r in range(world)]
