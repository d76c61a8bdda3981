"""``dpsgd``: train the audited model on the private set with DP-SGD.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016)
makes every optimiser step a Sampled Gaussian Mechanism:

1. Poisson sampling: each private sample joins a step's batch independently
   with probability ``q`` (the sample rate), so batch sizes vary.
2. Per-sample gradients are clipped to L2 norm ``max_grad_norm`` (``C``),
   bounding any one sample's influence on the step.
3. Gaussian noise of standard deviation ``sigma * C`` is added to the sum of
   clipped gradients, which is then divided by the expected batch size.

A privacy accountant (RDP, Mironov 2017; or PRV, Gopi et al. 2021) composes
the steps.  Here opacus (Yousefpour et al. 2021) does all three and picks the
smallest noise multiplier ``sigma`` whose accounted epsilon after the planned
number of steps is at most the target epsilon at ``delta``.

δ.  A mechanism that publishes one random record in full is (0, 1/n)-DP, so
δ must lie well below 1/n for ε to mean anything.  ``delta: auto`` (the
default since 2026-12-05) is :func:`default_delta`: the usual 10⁻⁵ for a
private set of fewer than 10⁵ samples (as in Abadi et al. and most DP-SGD
papers), and 1/(10 n) from 10⁵ samples on.  ``delta: null`` is 1/n, the
default before (7.5·10⁻⁴ on digits, where the same noise is ε ≈ 10.3 at
10⁻⁵); it is kept for the configs that ask for it, not recommended.  The
accountant (``rdp``: Mironov 2017; ``prv``: Gopi et al. 2021) is recorded
beside ε and δ in ``context.info``.

There is nothing to synthesize: the training set is the private set, and the
paradigm is all in :meth:`DPSGD.train`.  BatchNorm mixes samples of a batch
(a per-sample gradient is not defined), so a ``batch``-norm model is built
with GroupNorm instead (De et al. 2022 use GroupNorm for DP-SGD, too).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raypriv.config import ExperimentConfig, TrainConfig
from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.options import DPSGDOptions, resolve_delta
from raypriv.training import augment, make_optimizer, make_scheduler

_WHERE = "paradigm_options.dpsgd"


class DPSGD(Paradigm):
    name = "dpsgd"
    Options = DPSGDOptions
    stores_training_set = False  # it trains on the private set itself

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        return private

    def training_recipe(self, config: ExperimentConfig) -> None:
        """None: DP-SGD trains with opacus in :meth:`train`, never by the standard recipe."""
        return None

    def train(self, training_set: LabeledSet, context: ShadowContext) -> nn.Module:
        # opacus is imported here so that the other paradigms never pay for it.
        from opacus import PrivacyEngine

        opts: DPSGDOptions = self.options
        n = len(training_set)
        delta = resolve_delta(opts.delta, n)
        recipe = _dp_recipe(context.config.train, opts)
        if recipe.batch_size > n:
            raise RayprivError(
                f"{_WHERE}.batch_size={recipe.batch_size} is larger than the private set ({n} samples); "
                f"choose at most {n}"
            )

        # The audited architecture and initialisation, with a per-sample-gradient-friendly norm.
        model_config = context.config.model
        if model_config.norm == "batch":
            model_config = dataclasses.replace(model_config, norm="group")
        model = context.build_model(model_config)
        optimizer = make_optimizer(model, recipe)

        # The loader yields indices only; the data stay on the device and are gathered per batch.
        # opacus replaces it with a Poisson loader of sample rate 1/len(loader) and len(loader) steps per epoch.
        indices = TensorDataset(torch.arange(n))
        loader = DataLoader(indices, batch_size=recipe.batch_size, generator=context.generator("sampling"))
        noise_generator = _device_generator(context, "noise")

        with warnings.catch_warnings():
            # Not opacus' secure mode on purpose: a reproducible audit needs seeded sampling and noise.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=opts.accountant)
        common = dict(module=model, optimizer=optimizer, data_loader=loader, max_grad_norm=opts.max_grad_norm,
                      poisson_sampling=True, noise_generator=noise_generator)
        clip_only = opts.epsilon is None  # the DP-SGD frontier's far end: the same recipe without noise
        if clip_only:
            private_model, dp_optimizer, dp_loader = engine.make_private(noise_multiplier=0.0, **common)
        else:
            # What opacus' make_private_with_epsilon does, with the calibration cached: every shadow
            # model of a run asks for the same sigma, and each search costs ~0.25 s of accounting.
            sigma = calibrated_noise_multiplier(epsilon=opts.epsilon, delta=delta, sample_rate=1 / len(loader),
                                                epochs=recipe.epochs, accountant=engine.accountant.mechanism())
            private_model, dp_optimizer, dp_loader = engine.make_private(noise_multiplier=sigma, **common)

        steps_per_epoch = len(dp_loader)
        total_steps = recipe.epochs * steps_per_epoch
        scheduler = make_scheduler(dp_optimizer, recipe.lr_schedule, total_steps)
        augment_rng = context.generator("augment")
        x, y = training_set.x, training_set.y

        private_model.train()
        with warnings.catch_warnings():
            # opacus' backward hook on the first layer fires although the inputs need no gradient; harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(recipe.epochs):
                for (index,) in dp_loader:
                    index = index.to(x.device)
                    inputs = context.normalizer(augment(x[index], recipe, augment_rng))
                    # Mean over the drawn batch; opacus rescales to the *expected* batch size as the
                    # mechanism requires.  An empty Poisson batch still takes a (pure-noise) step.
                    loss = F.cross_entropy(private_model(inputs), y[index])
                    dp_optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    dp_optimizer.step()
                    scheduler.step()

        if not clip_only:  # no noise, no accounted epsilon (and no accountant: nothing was accounted)
            context.info.update(epsilon=float(engine.get_epsilon(delta)), delta=float(delta),
                                target_epsilon=float(opts.epsilon), accountant=opts.accountant)
        context.info.update(
            noise_multiplier=float(dp_optimizer.noise_multiplier),
            max_grad_norm=float(opts.max_grad_norm),
            sample_rate=float(dp_loader.sample_rate),
            steps=int(total_steps),
        )
        # Drop the per-sample-gradient hooks and attributes: a plain module for querying.
        return private_model.to_standard_module()


@functools.lru_cache(maxsize=64)
def calibrated_noise_multiplier(*, epsilon: float, delta: float, sample_rate: float, epochs: int, accountant: str) -> float:
    """The smallest noise multiplier whose accounted ε after ``epochs`` epochs at ``sample_rate`` is at most ``epsilon``.

    opacus' ``get_noise_multiplier`` (a bisection over the accountant), cached:
    its arguments fix its answer, and an audit asks once per shadow model.
    """
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      epochs=epochs, accountant=accountant))


def _dp_recipe(train: TrainConfig, opts: DPSGDOptions) -> TrainConfig:
    """The experiment's training recipe with the DP-SGD overrides applied."""
    overrides = {"epochs": opts.epochs, "batch_size": opts.batch_size, "lr": opts.lr, "optimizer": opts.optimizer}
    return dataclasses.replace(train, **{k: v for k, v in overrides.items() if v is not None})


def _device_generator(context: ShadowContext, stream: str) -> torch.Generator:
    """A generator on the device (opacus draws noise where the parameters live), seeded from ``stream``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=context.generator(stream)))
    generator = torch.Generator(device=context.device)
    generator.manual_seed(seed)
    return generator

