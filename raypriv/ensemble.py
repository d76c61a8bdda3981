"""The ensemble engine: train a group of G models at once with ``torch.func``.

An audit trains hundreds of small models on the same recipe.  One at a time,
a small model leaves a GPU mostly idle.  Here the G models' parameters and
buffers are stacked (``stack_module_state``), one forward/backward runs for
all of them (``vmap`` over ``functional_call`` of a ``grad_and_value``), and
one optimizer update moves every model.

Each model stays exactly what :func:`raypriv.training.train_classifier` would
make of it, up to floating-point rounding:

* its own initialisation (the caller builds each model from its seed),
* its own training set, batch order (its ``"order"`` stream) and
  augmentation draws (its ``"augment"`` stream), drawn in the same order as
  the per-model loop draws them,
* its own learning-rate schedule, momentum/Adam state and step count,
* its own BatchNorm batch statistics and running buffers: ``vmap`` keeps the
  model dimension apart, so no model sees another model's batch.

Models of one group may have training sets of different sizes, so at some
steps their batches differ in size (the last batch of an epoch) or a model has
finished.  Such a step runs once per distinct batch size on the models that
have it (their slices of the stacked state are gathered and scattered back);
every other step runs all G models in one call.

Nothing a model computes depends on the other models of its group, so a model
comes out the same whichever group it lands in (tested bit for bit on CPU);
:func:`train_group_splitting_on_oom` relies on that to halve a group that
does not fit in memory.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from raypriv.config import ExperimentConfig, TrainConfig
from raypriv.models import ARCHITECTURES
from raypriv.seeding import torch_generator
from raypriv.training import Normalizer, augment, autocast, epoch_batches, lr_factor


def _batches(n: int, config: TrainConfig, order_rng: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """The batch indices of one model, epoch after epoch, as ``train_classifier`` draws them."""
    for _ in range(config.epochs):
        yield from epoch_batches(n, config.batch_size, order_rng, device)


class _StackedOptimizer:
    """SGD (Nesterov momentum, L2 weight decay) or Adam over stacked parameters.

    The same update rules as ``torch.optim.SGD``/``torch.optim.Adam`` with the
    recipe's settings, with a learning rate and a step count per model.  A
    zero momentum buffer reproduces SGD's first step (``buf = d_p``).
    """

    def __init__(self, params: dict[str, torch.Tensor], config: TrainConfig):
        self.config = config
        self.state = {name: [torch.zeros_like(p)] for name, p in params.items()}
        if config.optimizer == "adam":
            for name, p in params.items():
                self.state[name].append(torch.zeros_like(p))

    @torch.no_grad()
    def step(
        self,
        params: dict[str, torch.Tensor],
        grads: dict[str, torch.Tensor],
        lr: torch.Tensor,
        steps_done: torch.Tensor,
        rows: torch.Tensor | None,
    ) -> None:
        """Update the models ``rows`` (all when None); ``lr`` (float64) and ``steps_done`` are theirs, shape ``(g,)``."""
        c = self.config
        for name, grad in grads.items():
            full_param, full_state = params[name], self.state[name]
            p = full_param if rows is None else full_param[rows]
            state = full_state if rows is None else [s[rows] for s in full_state]
            shape = (-1,) + (1,) * (p.dim() - 1)
            d = grad.to(p.dtype)
            if c.weight_decay:
                d = d + c.weight_decay * p
            if c.optimizer == "adam":
                beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
                exp_avg, exp_avg_sq = state
                exp_avg.lerp_(d, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(d, d, value=1 - beta2)
                t = (steps_done + 1).double()  # bias corrections in float64, as torch.optim.Adam's Python floats
                step_size = (lr / (1 - beta1**t)).to(p.dtype).view(shape)
                bias2_sqrt = (1 - beta2**t).sqrt().to(p.dtype).view(shape)
                denom = exp_avg_sq.sqrt() / bias2_sqrt + eps
                p.sub_(step_size * exp_avg / denom)
            else:
                (buffer,) = state
                if c.momentum:  # Nesterov, as make_optimizer sets whenever momentum > 0
                    buffer.mul_(c.momentum).add_(d)
                    d = d + c.momentum * buffer
                p.sub_(lr.to(p.dtype).view(shape) * d)
            if rows is not None:
                full_param[rows] = p
                for full, part in zip(full_state, state, strict=True):
                    full[rows] = part


def train_ensemble(
    models: Sequence[nn.Module],
    training_sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    normalizer: Normalizer,
    seed: int,
    model_ids: Sequence[int],
) -> list[nn.Module]:
    """Train ``models[g]`` on ``training_sets[g]`` with the recipe ``config``, all at once.

    The models must share an architecture and device; their sets may differ in
    size.  ``model_ids[g]`` picks each model's data-order and augmentation
    streams, as in :func:`raypriv.training.train_classifier`.  Returns the
    same module objects, trained, in eval-ready state.
    """
    if not (len(models) == len(training_sets) == len(model_ids)) or not models:
        raise ValueError("train_ensemble needs one training set and one model id per model")
    device = training_sets[0][0].device
    group = len(models)
    params, buffers = stack_module_state(list(models))
    params = {name: p.detach().clone() for name, p in params.items()}
    buffers = {name: b.clone() for name, b in buffers.items()}
    skeleton = copy.deepcopy(models[0]).to("meta").train()

    def loss_of_one(p, b, x, y):
        with autocast(device, config):
            return F.cross_entropy(functional_call(skeleton, (p, b), (x,)), y)

    batched_step = vmap(grad_and_value(loss_of_one), in_dims=(0, 0, 0, 0), randomness="error")

    batch_iterators = [
        _batches(len(y), config, torch_generator(seed, "order", model_id), device)
        for (_, y), model_id in zip(training_sets, model_ids, strict=True)
    ]
    augment_rngs = [torch_generator(seed, "augment", model_id) for model_id in model_ids]
    total_steps = [config.epochs * max(1, math.ceil(len(y) / config.batch_size)) for _, y in training_sets]
    steps_done = torch.zeros(group, dtype=torch.int64)
    optimizer = _StackedOptimizer(params, config)

    while True:
        batches = [next(it, None) for it in batch_iterators]
        active = [g for g in range(group) if batches[g] is not None]
        if not active:
            break
        by_size: dict[int, list[int]] = {}
        for g in active:
            by_size.setdefault(len(batches[g]), []).append(g)
        for members in by_size.values():
            inputs = torch.stack(
                [normalizer(augment(training_sets[g][0][batches[g]], config, augment_rngs[g])) for g in members]
            )
            targets = torch.stack([training_sets[g][1][batches[g]] for g in members])
            rows = None if len(members) == group else torch.tensor(members, device=device)
            p = params if rows is None else {name: v[rows] for name, v in params.items()}
            b = buffers if rows is None else {name: v[rows] for name, v in buffers.items()}
            if len(members) == 1:
                # vmap over one model picks other convolution kernels (groups=1) than over
                # several; a lone model runs beside a copy of itself, so its arithmetic is the
                # same in every group.
                pair = lambda tree: {name: v.expand(2, *v.shape[1:]).clone() for name, v in tree.items()}
                b_pair = pair(b)
                grads, _ = batched_step(
                    pair(p), b_pair, inputs.expand(2, *inputs.shape[1:]), targets.expand(2, *targets.shape[1:])
                )
                grads = {name: v[:1] for name, v in grads.items()}
                for name, value in b.items():
                    value.copy_(b_pair[name][:1])
            else:
                grads, _ = batched_step(p, b, inputs, targets)  # BatchNorm updates b's running stats in place
            if rows is not None:
                for name, value in b.items():
                    buffers[name][rows] = value
            member_index = torch.tensor(members)
            lr = torch.tensor(
                [config.lr * lr_factor(config.lr_schedule, int(steps_done[g]), total_steps[g]) for g in members],
                dtype=torch.float64,
                device=device,
            )
            optimizer.step(params, grads, lr, steps_done[member_index].to(device), rows)
            steps_done[member_index] += 1

    with torch.no_grad():
        for g, model in enumerate(models):
            model.load_state_dict({**{k: v[g] for k, v in params.items()}, **{k: v[g] for k, v in buffers.items()}})
    return list(models)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA, or the CPU allocator)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def train_group_splitting_on_oom(
    model_ids: Sequence[int],
    train_group: Callable[[Sequence[int]], list[nn.Module]],
    on_split: Callable[[int, int], None] | None = None,
) -> list[nn.Module]:
    """``train_group(model_ids)``, halving the group (recursively) when it runs out of memory.

    ``train_group`` must build its models afresh from their seeds on every
    call, so a retried half starts from the same state as the first attempt.
    A single model that does not fit re-raises the error.
    """
    try:
        return train_group(model_ids)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_out_of_memory(error) or len(model_ids) == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(model_ids) // 2
    if on_split is not None:
        on_split(len(model_ids), half)
    first = train_group_splitting_on_oom(model_ids[:half], train_group, on_split)
    return first + train_group_splitting_on_oom(model_ids[half:], train_group, on_split)


def models_fitting_in_memory(
    build_model: Callable[[], nn.Module],
    sample: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    normalizer: Normalizer,
    limit: int,
    headroom: float = 0.8,
) -> int:
    """How many models of this recipe one group may hold on the current CUDA device (at most ``limit``).

    Measures the peak memory of one ensemble step with two models and scales
    the free memory by it.  On CPU returns ``limit`` (the config decides).
    """
    device = sample[0].device
    if device.type != "cuda" or limit <= 1:
        return limit
    x, y = sample
    probe = min(len(y), config.batch_size)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    probe_config = dataclasses.replace(config, epochs=1)
    train_ensemble([build_model(), build_model()], [(x[:probe], y[:probe])] * 2, probe_config, normalizer, 0, [0, 1])
    per_model = max(1, (torch.cuda.max_memory_allocated(device) - before) / 2)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(limit, headroom * free // per_model)))


def resolve_engine(engine: str, arch: str, device: torch.device, has_recipe: bool) -> str:
    """The engine that trains a paradigm's models: ``"loop"`` or ``"ensemble"``.

    ``auto`` picks the ensemble for small architectures on CUDA.  On CPU the
    per-model loop already runs near the machine's matmul throughput and a
    vmapped group is slower (benchmarks/RESULTS.md), so ``auto`` loops there.
    Paradigms without a standard recipe (:meth:`Paradigm.training_recipe` is
    None) always loop.
    """
    if not has_recipe or engine == "loop":
        return "loop"
    if engine == "ensemble":
        return "ensemble"
    return "ensemble" if device.type == "cuda" and ARCHITECTURES[arch].ensemble_by_default else "loop"


def group_size(engine: str, models_per_group: int, pending: int, workers: int) -> int:
    """Models per call to a worker: 1 for the loop engine, else up to ``models_per_group``.

    Groups are also cut so that every worker gets one; a GPU worker may split
    its group further to fit its memory (:func:`train_fitting_memory`).
    """
    if engine == "loop":
        return 1
    return max(1, min(models_per_group, math.ceil(pending / max(1, workers))))


def train_fitting_memory(
    model_ids: Sequence[int],
    train_group: Callable[[Sequence[int]], list[nn.Module]],
    fits: int,
    on_split: Callable[[int, int], None] | None = None,
) -> list[nn.Module]:
    """Train ``model_ids`` in groups of at most ``fits`` (from :func:`models_fitting_in_memory`), each halved on OOM."""
    models: list[nn.Module] = []
    for start in range(0, len(model_ids), fits):
        models += train_group_splitting_on_oom(model_ids[start : start + fits], train_group, on_split)
    return models


def engine_for(config: ExperimentConfig, paradigm: Any, device: torch.device) -> str:
    """The engine that trains ``paradigm``'s models on ``device`` (see :func:`resolve_engine`)."""
    has_recipe = paradigm.training_recipe(config) is not None
    return resolve_engine(config.train.engine, config.model.arch, device, has_recipe)
