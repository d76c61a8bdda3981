"""``distill``: dataset distillation (condensation) into ``ipc`` images per class.

The private set is condensed into a tiny synthetic set, ``ipc`` learnable
images per class, and the audited model is trained on that set with the
standard recipe (``mtt`` and ``datm``: the papers' evaluation, ``eval_recipe``).
Five published methods (``mtt`` and ``datm``, trajectory
matching, live in :mod:`raypriv.synth.distill.trajectories`, which documents them and
their differences from the papers; the options and their defaults are in
:mod:`raypriv.synth.distill.options`):

* ``dm``  Distribution Matching.  Zhao & Bilen, "Dataset Condensation with
  Distribution Matching", WACV 2023.  Each iteration draws a freshly
  initialised embedding network ψ and, per class c, moves the synthetic images
  so that their mean embedding matches the real one:
  ``L = Σ_c ‖ mean ψ(A_ω(T_c)) − mean ψ(A_ω(S_c)) ‖²``, with A_ω a DSA
  augmentation shared by both batches.
* ``dc``  Dataset Condensation with gradient matching.  Zhao, Mopuri &
  Bilen, ICLR 2021.  An outer loop over network initialisations; inside it,
  alternate (i) one synthetic-image update that makes the per-class gradients
  of the classification loss on synthetic data match those on real data
  (a layer-wise cosine distance), with (ii) a few network updates on the
  synthetic set, so that matching also happens along the training trajectory.
* ``dsa`` Differentiable Siamese Augmentation.  Zhao & Bilen, ICML 2021.  DC
  with the same sampled augmentation applied to the real and the synthetic
  batch of every matching step (and augmented network updates).
* ``mtt`` Matching Training Trajectories.  Cazenavette et al., CVPR 2022:
  experts trained on the private set; the synthetic set and a learnable step
  size are optimised so that ``syn_steps`` student steps from an expert's
  epoch t land near its epoch t + ``expert_epochs``.
* ``datm`` Difficulty-Aligned Trajectory Matching.  Guo et al., ICLR 2024:
  MTT with learnable soft labels (returned as float32 class probabilities)
  and a start-epoch range that rises over the optimisation.

All optimisation happens in the network's normalised input space
(``context.normalizer``); the result is mapped back to pixel scale and clamped
to 0..1, with hard ``int64`` labels, classes in order.

**Privacy note.**  ``init: real`` (the papers' default) starts from randomly
chosen *private* samples of each class; with a short optimisation the
returned images stay close to those samples, so they leak membership almost
like the raw data.  ``noise`` (Gaussian noise in normalised space) and
``public`` (samples of a user-given public set) avoid that starting-point
leak; whatever leaks then came through the matching itself.

Embedding / matching networks (``embed_arch``): the papers use "ConvNet",
``depth`` blocks of [3x3 conv, instance norm, ReLU, 2x2 average pooling],
then a linear classifier.  Instance norm makes every image's features
independent of its batch, which matching per-class batches relies on.
``convnet`` (the default) is that network with 32 channels instead of 128
(CPU budget) and, on small images, fewer blocks (:func:`default_depth`: 2 on
8x8 digits, 3 from 16x16 up).  ``model`` uses the audited architecture
instead, BatchNorm handled as in the authors' code (per-class batches in
train mode for DM, statistics frozen from a mixed real batch for DC/DSA);
the default learning rates were chosen for ``convnet``.

Packs (``execution.pack``, the table :data:`raypriv.synth.distill.packs.PACKED_METHODS`)
run K pipelines with the ConvNet embedding as one batched computation:

* DM (``ipc >= 2``, :mod:`~raypriv.synth.distill.packed`): each pipeline's
  set equal to its single run's bit for bit;
* MTT/DATM (:mod:`~raypriv.synth.distill.packed_trajectories`): experts
  alone, the matching iterations grouped; equal in law (rounding grows to
  ~2e-2 over 60 iterations), so on a CPU only at an explicit ``execution.pack: K``;
* DC/DSA (:mod:`~raypriv.synth.distill.packed_gradient`): grouped networks,
  equal in law, and only where a GPU is present (no faster on a CPU).

``embed_arch: model`` runs one by one in a pack.

Differences from the papers, all for a ~10 s CPU budget per model: far fewer
iterations (300 for DM instead of 20,000; 10 for DC/DSA instead of 1,000),
``inner_loop`` 10 instead of 50, real batches of 64 per class instead of 256,
and one full-batch step per network update in DC/DSA.  With
``eval_recipe: config`` (the default for dm, dc, dsa) the audited model is trained with the
config's recipe, not the papers' evaluation protocol, for ``train_epochs``
(default 300) epochs: ``ipc * classes`` images make one batch, so the
recipe's 15 epochs would be only 15 steps.  ``eval_recipe: published`` (the
default for mtt and datm) trains it as the papers evaluate
(:func:`raypriv.synth.distill.common.train_published`, at the learned step size).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from raypriv.config import ExperimentConfig, TrainConfig
from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.distill.common import (
    ConvNet,
    RealSampler,
    apply_dsa,
    batchnorms,
    load_public_set,
    penultimate,
    pick_correct_per_class,
    pick_per_class,
    sample_dsa,
    siamese_augment,
)
from raypriv.synth.distill.options import TRAJECTORY_METHODS, DistillOptions
from raypriv.synth.distill.packed import dm_pack_memory_bytes
from raypriv.synth.distill.packs import packed_method
from raypriv.synth.distill.trajectories import distill_trajectories, train_at_learned_lr

IMAGE_MOMENTUM = 0.5  # the papers' SGD momentum for the synthetic images


def class_batches(
    syn: torch.Tensor, ipc: int, sampler: RealSampler, options: DistillOptions, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per class c: a fresh real batch and the synthetic images of c, both under one DSA draw."""
    real_batches, syn_batches = [], []
    for c in range(len(syn) // ipc):
        real_c, syn_c = siamese_augment(
            sampler.batch(c, options.batch_real), syn[c * ipc : (c + 1) * ipc], options.strategy, generator
        )
        real_batches.append(real_c)
        syn_batches.append(syn_c)
    return real_batches, syn_batches


# ------------------------------------------------------- distribution matching


def dm_loss(net: nn.Module, real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
    """Σ_c ‖mean ψ(real_c) − mean ψ(syn_c)‖² for one embedding network ψ.

    Classes are embedded separately so a BatchNorm network (embed_arch: model)
    normalises each class with its own statistics, as in the authors' code.
    """
    loss = torch.zeros((), device=syn[0].device)
    for real_c, syn_c in zip(real, syn, strict=True):
        with torch.no_grad():
            target = penultimate(net, real_c).mean(0)
        loss = loss + (target - penultimate(net, syn_c).mean(0)).pow(2).sum()
    return loss


def distribution_matching(
    syn: torch.Tensor,
    ipc: int,
    sampler: RealSampler,
    new_network: Callable[[], nn.Module],
    options: DistillOptions,
    augment_generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """DM: ``options.iterations`` steps, each with a fresh random embedding network.

    Returns the optimised images (class-major, ``ipc`` per class) and the last loss.
    """
    syn = syn.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=options.lr_image, momentum=IMAGE_MOMENTUM)
    loss = torch.zeros(())
    for _ in range(options.iterations):
        net = new_network()
        net.train()  # as the authors: BatchNorm (if any) uses batch statistics
        net.requires_grad_(False)  # ψ stays random; only the images learn
        loss = dm_loss(net, *class_batches(syn, ipc, sampler, options, augment_generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return syn.detach(), float(loss.detach())


# ---------------------------------------------------------- gradient matching


def layerwise_distance(real_grads: list[torch.Tensor], syn_grads: list[torch.Tensor]) -> torch.Tensor:
    """DC's distance: Σ over layers and output units of (1 − cosine similarity).

    A conv gradient (out, in, k, k) is compared per output channel as a
    vector of in·k·k entries, a linear one per output row.  Biases and
    normalisation parameters are left out, as in the paper.
    """
    total = torch.zeros((), device=syn_grads[0].device)
    for g_real, g_syn in zip(real_grads, syn_grads, strict=True):
        if g_real.dim() == 1:
            continue
        a, b = g_real.flatten(1), g_syn.flatten(1)
        total = total + (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)).sum()
    return total


def dc_loss(
    net: nn.Module, real: list[torch.Tensor], syn: list[torch.Tensor], create_graph: bool = True
) -> torch.Tensor:
    """Σ_c D(∇θ CE(net(real_c), c), ∇θ CE(net(syn_c), c)), differentiable w.r.t. syn."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = torch.zeros((), device=syn[0].device)
    for c, (real_c, syn_c) in enumerate(zip(real, syn, strict=True)):
        target_real = torch.full((len(real_c),), c, device=real_c.device)
        target_syn = torch.full((len(syn_c),), c, device=syn_c.device)
        real_grads = torch.autograd.grad(F.cross_entropy(net(real_c), target_real), params)
        syn_grads = torch.autograd.grad(F.cross_entropy(net(syn_c), target_syn), params, create_graph=create_graph)
        loss = loss + layerwise_distance([g.detach() for g in real_grads], syn_grads)
    return loss


def _freeze_batchnorm_statistics(net: nn.Module, sampler: RealSampler, num_classes: int) -> None:
    """The authors' BatchNorm handling for gradient matching: estimate the statistics
    on a real batch of all classes (16 each), then keep them fixed so that per-class
    batches do not get per-class normalisation."""
    norms = batchnorms(net)
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly its statistics
    net.train()
    with torch.no_grad():
        net(torch.cat([sampler.batch(c, 16) for c in range(num_classes)]))
    for norm in norms:
        norm.eval()


def gradient_matching(
    syn: torch.Tensor,
    ipc: int,
    sampler: RealSampler,
    new_network: Callable[[], nn.Module],
    options: DistillOptions,
    augment_generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """DC (``options.strategy`` empty) or DSA: gradient matching along training trajectories."""
    syn = syn.detach().clone().requires_grad_(True)
    optimizer_image = torch.optim.SGD([syn], lr=options.lr_image, momentum=IMAGE_MOMENTUM)
    num_classes = len(syn) // ipc
    labels = torch.arange(num_classes, device=syn.device).repeat_interleave(ipc)
    loss = torch.zeros(())
    for _ in range(options.iterations):
        net = new_network()
        optimizer_net = torch.optim.SGD(net.parameters(), lr=options.lr_net)
        for outer in range(options.outer_loop):
            # (i) update the synthetic images to match per-class gradients on this network
            net.train()
            _freeze_batchnorm_statistics(net, sampler, num_classes)
            loss = dc_loss(net, *class_batches(syn, ipc, sampler, options, augment_generator))
            optimizer_image.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_image.step()
            if outer == options.outer_loop - 1:
                break  # the last network update would not be used
            # (ii) train the network on the (fixed) synthetic set, augmented for DSA;
            # one full-batch step per inner iteration (the authors' batch of 256 holds it at ipc <= 25)
            net.train()
            images = syn.detach()
            for _ in range(options.inner_loop):
                inputs = images
                if options.strategy:  # plain augmentation here: nothing to pair with
                    params = sample_dsa(options.strategy, len(images), tuple(images.shape[-2:]), augment_generator)
                    inputs = apply_dsa(images, params)
                step_loss = F.cross_entropy(net(inputs), labels)
                optimizer_net.zero_grad(set_to_none=True)
                step_loss.backward()
                optimizer_net.step()
    return syn.detach(), float(loss.detach())


# ------------------------------------------------------------- the paradigm


class Distill(Paradigm):
    name = "distill"
    Options = DistillOptions

    def network_factory(self, context: ShadowContext, generator: torch.Generator) -> Callable[[], nn.Module]:
        """Fresh randomly initialised networks, each seeded from ``generator``."""
        options = self.options
        count = 0

        def new_network() -> nn.Module:
            nonlocal count
            count += 1
            if options.embed_arch == "model":
                return context.build_model(stream=f"{context.paradigm}/network/{count}")
            with torch.random.fork_rng(devices=[]):  # built on the CPU, so the same weights on any device
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
                net = ConvNet(context.input_shape, context.num_classes, options.embed_width, options.embed_depth)
            return net.to(context.device)

        return new_network

    def training_recipe(self, config: ExperimentConfig) -> TrainConfig | None:
        """The standard recipe; ``train_epochs`` only changes its epoch count.

        The papers evaluate a distilled set by training on it for hundreds of
        epochs (300 to 1000 in the authors' code); the config's epochs, sized
        for the full data, amount to few steps on ``ipc x classes`` images.
        ``eval_recipe: published``: None, so :meth:`train` trains each model at
        its own learned step size, one at a time (the ensemble engine trains a
        group with one shared recipe).
        """
        if self.options.eval_recipe == "published":
            return None
        if self.options.train_epochs is None:
            return config.train
        return dataclasses.replace(config.train, epochs=self.options.train_epochs)

    def train(self, training_set: LabeledSet, context: ShadowContext) -> nn.Module:
        """The config's recipe, or with ``eval_recipe: published`` the papers' evaluation at the learned step size."""
        if self.options.eval_recipe == "published":
            return train_at_learned_lr(training_set, context, self.options)
        return super().train(training_set, context)

    def split_by_class(self, private: LabeledSet, context: ShadowContext) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The private images normalised ``(N, C, H, W)``, and split by class; a RayprivError if one is missing."""
        if len(context.input_shape) != 3:
            raise RayprivError(
                f"paradigm 'distill' needs image inputs (C, H, W) but the dataset has shape {context.input_shape}"
            )
        real = context.normalizer(private.x)
        by_class = [real[private.y == c] for c in range(context.num_classes)]
        for c, images in enumerate(by_class):
            if len(images) == 0:
                raise RayprivError(
                    f"paradigm 'distill' (model {context.model_id}): the private set has no samples of class {c}, "
                    "so there is nothing to match; use a larger private set"
                )
        return real, by_class

    def as_result(self, syn: torch.Tensor, final_loss: float, context: ShadowContext) -> LabeledSet:
        """The optimised images (normalised, class-major) as the returned set; the last loss goes to ``info``."""
        # The matching loss of the last step (a stochastic estimate; DM and DC scales differ).
        context.info["distill_final_loss"] = final_loss
        x = context.normalizer.denormalize(syn).clamp(0.0, 1.0).float()
        y = torch.arange(context.num_classes, device=context.device).repeat_interleave(self.options.ipc)
        return LabeledSet(x, y)

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        options = self.options
        real, by_class = self.split_by_class(private, context)

        # Initialise the synthetic set (normalised space, class-major).
        init_generator = context.generator("init_images")
        if options.method in TRAJECTORY_METHODS:
            return self._trajectory_matching(private, real, context, init_generator)
        syn = self.initial_images(real, private.y, context, init_generator)

        sampler = RealSampler(by_class, context.generator("real_batches"))
        new_network = self.network_factory(context, context.generator("networks"))
        match = distribution_matching if options.method == "dm" else gradient_matching
        syn, final_loss = match(syn, options.ipc, sampler, new_network, options, context.generator("dsa"))
        return self.as_result(syn, final_loss, context)

    # ------------------------------------------------------------ packs

    def packs_synthesis(self) -> bool:
        """Whether these options have a batched pack (:data:`raypriv.synth.distill.packs.PACKED_METHODS`)."""
        return packed_method(self.options) is not None

    def packs_bit_exact(self) -> bool:
        """Only DM's pack gives the single run's bits; dc/dsa/mtt/datm packs are equal in law (see the table)."""
        entry = packed_method(self.options)
        return entry is None or entry.bit_exact

    def synthesize_pack(self, privates: list[LabeledSet], contexts: list[ShadowContext]) -> list[LabeledSet | Exception]:
        """K pipelines at once by the method's entry of :data:`~raypriv.synth.distill.packs.PACKED_METHODS`."""
        entry = packed_method(self.options)
        if entry is None:  # only called where packs_synthesis() said True
            return super().synthesize_pack(privates, contexts)
        return entry.synthesize(self, privates, contexts)

    def pack_memory_bytes(self, input_shape: tuple[int, ...], num_classes: int, private_size: int) -> int:
        """The method's estimate (the table's ``memory_bytes``); DM's for options without a batched pack."""
        entry = packed_method(self.options)
        estimate = dm_pack_memory_bytes if entry is None else entry.memory_bytes
        return estimate(self.options, tuple(input_shape), num_classes, private_size)

    def initial_images(
        self,
        real: torch.Tensor,
        labels: torch.Tensor,
        context: ShadowContext,
        generator: torch.Generator,
        teacher: nn.Module | None = None,
    ) -> torch.Tensor:
        """``ipc`` starting images per class (normalised, class-major) as ``init`` says.

        With a ``teacher`` (DATM) and ``init: real``, each class's images are
        drawn from the private samples the teacher classifies correctly (all of
        the class's samples where fewer than ``ipc`` are).
        """
        options, k, ipc = self.options, context.num_classes, self.options.ipc
        if options.init == "real":
            if teacher is None:
                return pick_per_class(real, labels, k, ipc, generator, "private")
            return pick_correct_per_class(real, labels, teacher, k, ipc, generator)
        if options.init == "noise":
            return torch.randn((k * ipc, *context.input_shape), generator=generator).to(context.device)
        x_public, y_public = load_public_set(options.public_path, context.input_shape, k)
        chosen = pick_per_class(x_public, y_public, k, ipc, generator, "public")
        return context.normalizer(chosen.to(context.device))

    def _trajectory_matching(
        self, private: LabeledSet, real: torch.Tensor, context: ShadowContext, init_generator: torch.Generator
    ) -> LabeledSet:
        """MTT / DATM (:mod:`raypriv.synth.distill.trajectories`) on this model's private set."""
        k, ipc = context.num_classes, self.options.ipc
        labels = private.y.to(real.device)
        ids = torch.arange(k, device=context.device).repeat_interleave(ipc)

        def init_images(teacher: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
            return self.initial_images(real, labels, context, init_generator, teacher), ids

        syn, y = distill_trajectories(
            real, labels, init_images, self.network_factory(context, context.generator("networks")),
            self.options, lambda stream: context.generator(stream), context.info,
        )
        return LabeledSet(context.normalizer.denormalize(syn).clamp(0.0, 1.0).float(), y)
