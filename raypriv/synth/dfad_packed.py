"""Packs of ``dfkd`` DFAD pipelines: K generator/student games played as one batched computation (``execution.pack``).

A single DFAD run (:func:`raypriv.synth.dfad.adversarial_distillation`)
plays one game between a generator and the student (the audited
architecture) through a frozen teacher: per step, ``student_steps`` SGD
steps of the student on the L1 distance between its logits and the
teacher's on generated inputs, then one Adam step of the generator against
that distance.  The K pipelines of a pack play their K games in lockstep
(every pipeline has the same options, so the same number of steps), and
nothing here draws from torch's global generator:

* the K students', K generators' and K teachers' parameters and buffers are
  stacked (``torch.func.stack_module_state``, :class:`StackedNetworks`) and
  every network call of a step is one ``vmap`` over ``functional_call``:
  each pipeline's slice sees only its own batch, so BatchNorm in train mode
  normalises with that batch's statistics and updates that pipeline's
  running statistics, as the single run's modules do (the generator's
  affine-free last BatchNorm included; its running statistics make the
  recorded set, in eval mode);
* the loss of each pipeline is its own mean L1 distance, and the gradient of
  their sum is each pipeline's own gradient, so one backward pass serves the
  pack;
* one ``torch.optim.SGD`` over the K students' stacked parameters and one
  ``torch.optim.Adam`` over the K generators' are K single runs' optimisers:
  both updates are element-wise, and the K pipelines share the cosine
  schedule and the step count;
* in the generator's step the students' parameters enter detached: the
  single run fills the student's gradients there too, but its next
  ``zero_grad`` discards them, and skipping them changes nothing else.

Each pipeline draws from its own ``(seed, model id)`` streams in the single
run's order: its generator's initial weights (``dfad-generator-init``,
:func:`raypriv.synth.dfad.initial_generator`), its student's
(``context.build_model()``), one latent batch per network call
(``dfad-noise``) and the recorded set's latents (``dfad-record``).  Each
teacher trains alone, by the single run's code, before the games start.

**Equality with the single run: in law, not bit for bit.**  ``vmap`` runs the
K networks as grouped convolutions and batched matrix products, which sum
in another order than one network's kernels, so the first step's students
and generators agree with the single run's to rounding (about 1e-7,
``tests/test_packs_dfkd.py`` checks 1e-5).  The game is adversarial and
amplifies such differences over the steps (the student's SGD step is
``lr * g``, the generator's Adam step ``lr * m / sqrt(v)`` turns a rounding
in a gradient near zero into a full step), so the final students and
records of a long run differ from the single run's as two runs with other
rounding do: the same distribution (the same streams, initialisations,
schedules and game), not the same bits.  Hence
:meth:`raypriv.synth.dfkd.DataFreeKD.packs_bit_exact` is False for DFAD, and
``execution.pack: auto`` packs it only on a GPU.  A pack whose teachers
leave a single pipeline alive plays that one game by the single run's own
code (bit for bit).  Measured on digits (tiny config: cnn_small width 8,
generator width 8, batches of 32; CPU, 2026-12-06): after one student step
the students, generators and records agree to 6e-8, after 3 x 2 steps to
6e-7, after 30 x 5 steps the students differ by up to 0.19 and the
recorded pixels by up to 0.33.  At the default options (200 x 5 steps,
digits, 8 models, 2026-12-06) the games have fully parted: recorded pixels
differ by up to 1 (0.2 on average), the class histograms of the records
differ, and the students' test accuracies (0.74 to 0.95) differ from the
single runs' by -8 to +1 points (mean 0.854 packed, 0.886 alone).  A
change of 1e-7 (relative) in the single run's initial student weights,
rounding-sized, moves its accuracies as much (-0 to -6 points on 4 models),
which is what "equal in law" means here: the pack's outcome is one draw of
the single run's outcome under rounding, not a biased one.  Tested for bias
on 2026-12-06 with two digits-default audits of 32 DFAD models each, the
same model ids and private sets, ``execution.pack`` 1 against 8 (``raypriv
report RUN1 RUN2 --compare``): test accuracy 0.891 packed against 0.893
alone (paired difference -0.2 points, 95% CI -1.2 to +0.7, t-test p = 0.62;
lower in 17 of 32); LiRA online AUC 0.762 against 0.764 and TPR at 1% FPR
6.1% against 8.0% (paired bootstrap over audit samples: difference 1.9
points, 95% CI -0.4 to +4.4, p = 0.09; no significant difference).  32
models bound a bias in accuracy to about a point, but not yet one in the
tail of the attack to better than 4 points of TPR.

**Speed.**  On a CPU a pack is about as fast as the loop: a step's time
goes to per-input kernels (the convolutions and their backward about half,
max-pooling and BatchNorm a quarter, in the single run and the pack alike;
profiled on digits, 1 thread, 2026-12-06), and ``vmap``'s batched
BatchNorm adds copies that eat the saved per-operation overhead.  Wall
clock on 2 quiet cores, digits defaults, 16 models (2026-12-06): 136
models/h in the loop, 120 in packs of 4 (0.88x), 137 of 8 (1.01x) and 135
of 16 (0.99x) (``benchmarks/bench_synthesis.py --only dfkd@dfad``; on a
loaded machine, packs of 4 and 8 read 1.12-1.14x).  Packs should pay on a
GPU (not measured).

Where a pack departs from the single run, besides the rounding: all K
teachers train before the first game starts (each as alone: same code,
same streams); each pipeline's L1 loss is ``F.l1_loss`` element-wise then
its own mean (the same value to rounding); the students' gradients of the
generator's step are not computed (see above); and the K students live
until ``train`` takes them (K times one student's memory, see
:func:`game_memory_bytes`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from raypriv.synth.base import ShadowContext
from raypriv.synth.dfad import Generator, generator_optimizer_and_schedule, student_optimizer_and_schedule
from raypriv.synth.options import DFKDOptions


class StackedNetworks:
    """K networks of one architecture as stacked tensors, called as one ``vmap`` over ``functional_call``.

    ``params`` and ``buffers`` map each name to a ``(K, *shape)`` tensor;
    the parameters are leaves that require gradients where ``trainable``.
    The skeleton (a weightless copy of the first network) keeps the first
    network's mode: train mode for a student and a generator (BatchNorm
    normalises with the batch and updates the pipeline's own running
    statistics in ``buffers``, in place), eval mode for a teacher.
    """

    def __init__(self, networks: list[nn.Module], trainable: bool):
        params, buffers = stack_module_state(networks)
        self.params = {name: p.detach().clone().requires_grad_(trainable) for name, p in params.items()}
        self.buffers = {name: b.clone() for name, b in buffers.items()}
        self.skeleton = copy.deepcopy(networks[0]).to("meta")
        self.skeleton.train(networks[0].training)

        def call(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, (p, b), (x,))

        self.batched: Callable[..., torch.Tensor] = vmap(call)

    def __call__(self, x: torch.Tensor, detached: bool = False) -> torch.Tensor:
        """The K networks on their own inputs: ``x[p]`` ``(B, ...)`` through network p, shape ``(K, B, ...)``.

        ``detached``: the parameters enter without gradient (their buffers still update).
        """
        params = {name: p.detach() for name, p in self.params.items()} if detached else self.params
        return self.batched(params, self.buffers, x)

    def write_back(self, networks: list[nn.Module]) -> None:
        """Load pipeline p's slice of the parameters and buffers into ``networks[p]``."""
        with torch.no_grad():
            for p, network in enumerate(networks):
                state = {name: v[p] for name, v in self.params.items()} | {name: v[p] for name, v in self.buffers.items()}
                network.load_state_dict(state)


def adversarial_distillation_pack(
    teachers: list[nn.Module],
    students: list[nn.Module],
    generators: list[Generator],
    options: DFKDOptions,
    contexts: list[ShadowContext],
) -> list[list[float]]:
    """:func:`raypriv.synth.dfad.adversarial_distillation` for K pipelines (``teachers[p]``, ``students[p]``,
    ``generators[p]`` with ``contexts[p]``), the K games as one batched computation.

    The teachers are frozen (eval mode, no gradients), the students are the
    audited architecture at their initial weights, the generators at theirs
    (:func:`raypriv.synth.dfad.initial_generator`).  Trains the students
    and generators in place (the students stay in train mode, the generators
    end in eval mode, as in the single run) and returns each pipeline's L1
    loss at every student step.  The contexts share one worker (input
    shape, normaliser, device).
    """
    context = contexts[0]
    device, normalizer = context.device, context.normalizer
    noises = [c.generator("dfad-noise") for c in contexts]
    for student, generator in zip(students, generators, strict=True):
        student.train()
        generator.train()
    stacked_students = StackedNetworks(students, trainable=True)
    stacked_generators = StackedNetworks(generators, trainable=True)
    stacked_teachers = StackedNetworks(teachers, trainable=False)
    student_optimizer, student_schedule = student_optimizer_and_schedule(list(stacked_students.params.values()), options)
    generator_optimizer, generator_schedule = generator_optimizer_and_schedule(
        list(stacked_generators.params.values()), options
    )

    def sample() -> torch.Tensor:
        """One latent batch per pipeline from its own ``dfad-noise`` stream, ``(K, batch_size, latent_dim)``."""
        return torch.stack([torch.randn(options.batch_size, options.latent_dim, generator=g) for g in noises]).to(device)

    def l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Each pipeline's ``F.l1_loss`` (the mean over its batch and classes), ``(K,)``."""
        return F.l1_loss(student_logits, teacher_logits, reduction="none").flatten(1).mean(1)

    losses = []
    for _ in range(options.steps):
        # Students: imitate their teachers on their generators' current inputs (the generators held fixed).
        for _ in range(options.student_steps):
            with torch.no_grad():
                x = normalizer(stacked_generators(sample()))  # (K, B, C, H, W); the normaliser broadcasts over K
                target = stacked_teachers(x)
            loss = l1(stacked_students(x), target)
            student_optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # pipeline p's loss depends on its student alone: its own gradient
            student_optimizer.step()
            losses.append(loss.detach())
        # Generators: towards the inputs where each student and its teacher disagree most.
        x = normalizer(stacked_generators(sample()))
        loss = -l1(stacked_students(x, detached=True), stacked_teachers(x))
        generator_optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        generator_optimizer.step()
        student_schedule.step()
        generator_schedule.step()
    stacked_students.write_back(students)
    stacked_generators.write_back(generators)
    for generator in generators:
        generator.eval()
    per_step = torch.stack(losses).cpu()  # (student steps, K)
    return [per_step[:, p].tolist() for p in range(len(contexts))]


# Float32 copies of one input that bound a classifier's layer outputs and their gradients per input (DeepInversion's
# bound too).  Counted on the meta device (2026-12-06): cnn_small on 8x8 digits about 400, the CIFAR-10 WRN-16-4
# about 700 and ResNet-18 about 970.
CLASSIFIER_COPIES_PER_INPUT = 1024


def generator_sizes(options: DFKDOptions, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The generator's parameter count and the float32 values its layers output per generated input (counted on the
    ``meta`` device: nothing is allocated or drawn)."""
    from raypriv.training import Normalizer

    outputs = [0]

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        outputs[0] += output[0].numel()  # one input's share of this layer's output

    with torch.device("meta"):
        channels = input_shape[0]
        normalizer = Normalizer(torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1))
        generator = Generator(options.latent_dim, options.generator_width, input_shape, normalizer)
        handles = [m.register_forward_hook(count) for m in generator.modules() if not list(m.children())]
        generator(torch.zeros(1, options.latent_dim))
    for handle in handles:
        handle.remove()
    return sum(p.numel() for p in generator.parameters()), outputs[0]


def game_memory_bytes(options: DFKDOptions, input_shape: tuple[int, ...], num_classes: int) -> int:
    """An upper estimate of one DFAD pipeline's memory in a pack beyond its teacher's training, in bytes.

    * The generator's weights (its module's and the pack's stacked copy),
      gradients and two Adam moments: five copies, counted exactly
      (:func:`generator_sizes`).
    * One step's activations: ``batch_size`` generated inputs through the
      generator (its layers' outputs, kept for the backward pass, and their
      gradients: 3 copies), the teacher and the student (each bounded by
      :data:`CLASSIFIER_COPIES_PER_INPUT` float32 copies of an input per
      input, activations and gradients).
    * The record: ``n_synthetic`` inputs and their soft labels.

    The teacher's and the student's weights are not known here (the estimate
    sees the options, not the model): the teacher's weights (its module and
    the stacked copy) and the student's (its module, the stacked copy, its
    gradients and momentum), six copies of a network, are taken to fit in
    the teacher's training bound that the caller adds
    (:meth:`raypriv.synth.base.Paradigm.pack_memory_bytes`, 64 float32
    copies of the private set, freed before the game).  That holds whenever
    a network has fewer than 10 weights per private input value: cnn_small
    at its default width has 24 thousand, against 10 x 64 x 1,330 = 0.85
    million for a digits private set; the CIFAR-10 ResNet-18 11 million,
    against 770 million for 25,000 private images.
    """
    per_input = 4 * int(torch.Size(input_shape).numel())
    image_shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    generator_parameters, generator_values = generator_sizes(options, image_shape)
    generator_state = 5 * 4 * generator_parameters
    activations = options.batch_size * (3 * 4 * generator_values + 2 * CLASSIFIER_COPIES_PER_INPUT * per_input)
    record = options.n_synthetic * (per_input + 4 * num_classes)
    return generator_state + activations + record
