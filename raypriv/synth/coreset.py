"""``coreset``: train on ``ipc`` real private samples per class.

A coreset is a small subset of the training set chosen to stand in for all
of it.  The audited model trains on these *private samples themselves*, so a
selected sample leaks like any training sample (more, if the selection
favours outliers such as mislabeled canaries); the audit should show it.

Methods (each picks ``ipc`` samples per class, class by class):

* ``random``: uniform without replacement (the usual coreset baseline).
* ``herding`` (Welling, "Herding dynamical weights to learn", ICML 2009; in
  the form of Rebuffi et al., iCaRL, CVPR 2017, Alg. 4): greedily add the
  sample that brings the mean embedding of the selected samples closest to
  the class mean.
* ``kcenter`` (Sener & Savarese, "Active learning for convolutional neural
  networks: a core-set approach", ICLR 2018, Alg. 1, k-center greedy):
  greedily add the sample farthest from everything selected so far.
* ``forgetting`` (Toneva et al., "An empirical study of example forgetting
  during deep neural network learning", ICLR 2019): train on the private
  set, count how often each sample goes from correctly to wrongly
  classified, and keep the most forgotten (never-learned samples first).

Herding and k-center work in the penultimate-layer embedding (the input of
the last linear layer) of a *scoring model*: the audited architecture with
its own initialisation (stream ``coreset-features``) trained on the private
set with the experiment's recipe for ``feature_epochs`` epochs.  Forgetting
trains the same scoring model while recording its predictions.  The audited
model then trains on the coreset with the experiment's recipe for
``train_epochs`` epochs (a small set needs many epochs to get enough steps).

Mislabeled canaries are outliers in embedding space and are never learned by
the scoring model, so ``kcenter`` and ``forgetting`` pick them first: on the
digits default nearly the whole coreset is IN canaries, maximal leakage and
near-chance test accuracy (without canaries both reach ~0.91-0.93).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raypriv.config import ExperimentConfig, TrainConfig
from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.options import CoresetOptions
from raypriv.training import Normalizer, train_classifier

_WHERE = "paradigm_options.coreset"
SCORED_METHODS = ("herding", "kcenter")  # the methods that select in a trained scoring model's embedding


class Coreset(Paradigm):
    name = "coreset"
    Options = CoresetOptions

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        opts: CoresetOptions = self.options
        by_class = _indices_by_class(private.y, context.num_classes, opts.ipc, context.model_id)
        scorer = _scoring_model(private, context, opts) if opts.method in SCORED_METHODS else None
        return self.select(private, context, by_class, scorer)

    def select(
        self, private: LabeledSet, context: ShadowContext, by_class: list[torch.Tensor], scorer: nn.Module | None
    ) -> LabeledSet:
        """The coreset of ``private`` given its per-class positions and (herding, kcenter) its trained scoring model.

        ``forgetting`` trains its own scoring model here (it records the
        training itself); ``random`` needs none.
        """
        opts: CoresetOptions = self.options
        if opts.method == "random":
            rng = context.rng("random")
            picks = []
            for index in by_class:
                chosen = torch.from_numpy(rng.choice(len(index), opts.ipc, replace=False))
                picks.append(index[chosen.to(index.device)])
        elif opts.method in SCORED_METHODS:
            assert scorer is not None
            features = penultimate_features(scorer, private.x, context.normalizer, context.config.train.eval_batch_size)
            picks = []
            for index in by_class:
                if opts.method == "herding":
                    # iCaRL herds L2-normalised features: every sample counts with the same weight.
                    class_features = F.normalize(features[index], dim=1)
                    picks.append(index[herding_order(class_features, opts.ipc)])
                else:
                    # Sener & Savarese use raw activations and L2 distance.  The first
                    # centre is the sample nearest the class mean (deterministic; their
                    # active-learning setting starts from an already labelled pool instead).
                    class_features = features[index]
                    first = int(torch.cdist(class_features, class_features.mean(0, keepdim=True))[:, 0].argmin())
                    picks.append(index[kcenter_greedy(class_features, opts.ipc, first)])
        else:  # forgetting
            correct = _train_recording_correctness(private, context, opts)
            counts = forgetting_counts(correct)
            ties = context.rng("forgetting-ties")
            picks = [index[most_forgotten(counts[index], opts.ipc, ties)] for index in by_class]
            context.info.update(
                never_learned=int(torch.isinf(counts).sum()),
                forgotten_at_least_once=int((counts > 0).sum()),
                selected_never_learned=int(torch.isinf(counts[torch.cat(picks)]).sum()),
            )

        selected = torch.cat(picks)
        return LabeledSet(private.x[selected], private.y[selected])

    # ------------------------------------------------------------ packs

    def packs_synthesis(self) -> bool:
        """Whether a pack trains its K scoring models at once: herding and kcenter where a GPU is present.

        What a coreset costs is its scoring model's training (the selection
        is a few milliseconds).  Trained with the ensemble engine
        (:func:`raypriv.ensemble.train_ensemble`) K at once, it pays on a GPU,
        where the per-model loop leaves the device idle; on a CPU a vmapped
        group is slower than the loop (measured on digits, 2026-12-05, 8
        scoring models: see :func:`scorer_engine`), so a CPU-only host keeps
        packs off (``execution.pack: auto`` is 1) and an explicit K runs one
        by one.  ``forgetting`` records per-sample correctness during
        training, which the ensemble engine does not expose, and ``random``
        trains nothing: both always run one by one.
        """
        return self.options.method in SCORED_METHODS and torch.cuda.is_available()

    def synthesize_pack(self, privates: list[LabeledSet], contexts: list[ShadowContext]) -> list[LabeledSet | Exception]:
        """K coresets: each pipeline's checks alone, the K scoring models by :func:`train_scorers`, each selection alone.

        The engine is :func:`scorer_engine`'s for the pack's device.  With the
        loop a pipeline selects exactly the indices of its single run; with
        the ensemble its scoring model equals the single run's up to float
        rounding (and max-pool ties routed apart, :mod:`raypriv.ensemble`),
        so its selection is the single run's in law and, where the models
        agree to rounding, the same indices (``tests/test_packs_coreset.py``).
        A pipeline whose check or selection raises gets its own exception; if
        the batched training raises, the pack's scoring models are trained
        again one by one, so an error stays with its own model.
        """
        opts: CoresetOptions = self.options
        results: list[LabeledSet | Exception | None] = [None] * len(privates)
        ready: list[tuple[int, list[torch.Tensor]]] = []
        for p, (private, context) in enumerate(zip(privates, contexts, strict=True)):
            try:
                ready.append((p, _indices_by_class(private.y, context.num_classes, opts.ipc, context.model_id)))
            except Exception as exc:  # noqa: BLE001 - this pipeline's own failure, raised for it by the caller
                results[p] = exc
        scorers: list[nn.Module | Exception | None] = [None] * len(ready)
        if opts.method in SCORED_METHODS and ready:
            chosen_privates = [privates[p] for p, _ in ready]
            chosen_contexts = [contexts[p] for p, _ in ready]
            engine = scorer_engine(chosen_contexts[0])
            try:
                scorers = list(train_scorers(chosen_privates, chosen_contexts, opts, engine))
            except Exception:  # noqa: BLE001 - retried one by one below, so each model gets its own error
                scorers = []
                for private, context in zip(chosen_privates, chosen_contexts, strict=True):
                    try:
                        scorers.append(_scoring_model(private, context, opts))
                    except Exception as exc:  # noqa: BLE001 - this pipeline's own failure
                        scorers.append(exc)
        for (p, by_class), scorer in zip(ready, scorers, strict=True):
            if isinstance(scorer, Exception):
                results[p] = scorer
                continue
            try:
                results[p] = self.select(privates[p], contexts[p], by_class, scorer)
            except Exception as exc:  # noqa: BLE001 - this pipeline's own failure
                results[p] = exc
        return results  # type: ignore[return-value]

    def pack_memory_bytes(self, input_shape: tuple[int, ...], num_classes: int, private_size: int) -> int:
        """One packed pipeline's working memory: its private set as float32 (a few copies: normalised, augmented,
        the features), its scoring model's activations on a training batch (~64 float32 maps of the input size
        per image, generous for ``cnn_small``) and at feature extraction (``eval_batch_size`` images at once is
        bounded by the same per-image factor on the private set)."""
        pixels = int(np.prod(input_shape))
        return 4 * pixels * (4 * private_size + 64 * private_size)

    def training_recipe(self, config: ExperimentConfig) -> TrainConfig:
        """The experiment's recipe, for ``train_epochs`` epochs on the coreset."""
        if self.options.train_epochs is None:
            return config.train
        return dataclasses.replace(config.train, epochs=self.options.train_epochs)


# ------------------------------------------------------------------- selection


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Herding: ``k`` row indices of ``features`` (n, d), in the order picked.

    Step ``t`` picks the not yet selected row ``i`` minimising
    ``|| mean(features) - (sum of the t-1 picked rows + features[i]) / t ||``:
    the running mean of the selection tracks the class mean as closely as a
    greedy choice can.  Rows are picked without replacement (as in iCaRL).
    """
    target = features.mean(0)
    running_sum = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    order = []
    for t in range(1, k + 1):
        distance = ((running_sum + features) / t - target).pow(2).sum(1)
        distance[~available] = math.inf
        i = int(distance.argmin())
        order.append(i)
        available[i] = False
        running_sum = running_sum + features[i]
    return torch.tensor(order, dtype=torch.long, device=features.device)


def kcenter_greedy(features: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """k-center greedy: ``k`` row indices of ``features``, starting from row ``first``.

    Each step adds the row whose distance to its nearest selected row is the
    largest, a 2-approximation of the minimax (k-center) cover.
    """
    order = [first]
    nearest = torch.cdist(features, features[first : first + 1])[:, 0]  # distance to the nearest centre
    nearest[first] = -math.inf  # never pick a centre twice (duplicates are also at distance 0)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        order.append(i)
        nearest = torch.minimum(nearest, torch.cdist(features, features[i : i + 1])[:, 0])
        nearest[order] = -math.inf
    return torch.tensor(order, dtype=torch.long, device=features.device)


def forgetting_counts(correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events per sample from a ``(presentations, n)`` record.

    ``correct[t, i]`` is 1 if sample ``i`` was classified correctly at its
    ``t``-th presentation, 0 if not, and -1 if it was not presented then.  A
    forgetting event is a presentation that is wrong right after a correct one.
    Samples never classified correctly count ``inf`` (Toneva et al. rank them
    as the most forgettable).
    """
    n = correct.shape[1]
    counts = torch.zeros(n, device=correct.device)
    previous = torch.full((n,), -1, dtype=correct.dtype, device=correct.device)
    for now in correct:
        seen = now >= 0
        counts += (seen & (previous == 1) & (now == 0)).float()
        previous = torch.where(seen, now, previous)
    learned = (correct == 1).any(0)
    counts[~learned] = math.inf
    return counts


def most_forgotten(counts: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """The ``k`` positions with the most forgetting events; ties broken at random by ``rng``."""
    tiebreak = rng.random(len(counts))
    order = np.lexsort((tiebreak, -counts.cpu().numpy()))  # last key sorts first: most forgotten first
    return torch.from_numpy(order[:k].copy()).to(counts.device)


# ---------------------------------------------------------- the scoring model


def _indices_by_class(y: torch.Tensor, num_classes: int, ipc: int, model_id: int) -> list[torch.Tensor]:
    """Private-set positions of each class; every class must hold ``ipc`` samples."""
    by_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    for c, index in enumerate(by_class):
        if len(index) < ipc:
            smallest = min(len(i) for i in by_class)
            raise RayprivError(
                f"{_WHERE}.ipc={ipc}: class {c} has only {len(index)} samples in the private set of model {model_id}, "
                f"so {ipc} per class cannot be selected; choose ipc <= {smallest}"
            )
    return by_class


def _scoring_recipe(context: ShadowContext, opts: CoresetOptions) -> TrainConfig:
    train = context.config.train
    return dataclasses.replace(train, epochs=opts.feature_epochs or train.epochs)


def scorer_engine(context: ShadowContext) -> str:
    """How a pack trains its scoring models: the engine :func:`raypriv.ensemble.resolve_engine` picks for the
    audited models (``train.engine``; ``auto``: the ensemble for small architectures on CUDA, the loop on CPU).

    Measured on digits (2026-12-05, 2 shared cores, torch 1 thread, 8
    ``cnn_small`` scoring models, 15 epochs): the ensemble took longer than
    the loop, as for the audited models (benchmarks/RESULTS.md).
    """
    from raypriv.ensemble import resolve_engine

    return resolve_engine(context.config.train.engine, context.config.model.arch, context.device, True)


def train_scorers(
    privates: list[LabeledSet], contexts: list[ShadowContext], opts: CoresetOptions, engine: str
) -> list[nn.Module]:
    """The scoring models of K pipelines (herding, kcenter), each on its own private set.

    ``engine="loop"``: one by one, exactly as :meth:`Coreset.synthesize`
    trains each.  ``"ensemble"``: K at once with
    :func:`raypriv.ensemble.train_ensemble`, each model from the same
    initialisation (stream ``coreset-features``), recipe and data-order and
    augmentation streams as alone, so equal to it up to float rounding.
    """
    if engine == "loop":
        return [_scoring_model(private, context, opts) for private, context in zip(privates, contexts, strict=True)]
    from raypriv.ensemble import train_ensemble

    first = contexts[0]
    return train_ensemble(
        [context.build_model(stream="coreset-features") for context in contexts],
        [(private.x, private.y) for private in privates],
        _scoring_recipe(first, opts),
        first.normalizer,
        first.seed,
        [context.model_id for context in contexts],
    )


def _scoring_model(private: LabeledSet, context: ShadowContext, opts: CoresetOptions) -> nn.Module:
    """The audited architecture, own initialisation, trained on the private set."""
    model = context.build_model(stream="coreset-features")
    return context.train_classifier(model, private, _scoring_recipe(context, opts))


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RayprivError(f"coreset: the model {type(model).__name__} has no linear layer to take embeddings before")
    return linears[-1]


@torch.no_grad()
def penultimate_features(
    model: nn.Module, x: torch.Tensor, normalizer: Normalizer, batch_size: int = 1024
) -> torch.Tensor:
    """Eval-mode embeddings: the input of the model's last linear layer (its classifier head).

    That is ``features`` of ``cnn_small``, the pooled activations of the
    ResNets and the last hidden layer of ``mlp``.
    """
    captured: list[torch.Tensor] = []
    hook = _last_linear(model).register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].float()))
    try:
        model.eval()
        for start in range(0, len(x), batch_size):
            model(normalizer(x[start : start + batch_size]))
    finally:
        hook.remove()
    return torch.cat(captured)


def _train_recording_correctness(private: LabeledSet, context: ShadowContext, opts: CoresetOptions) -> torch.Tensor:
    """Train the scoring model as ``train_classifier`` does, recording each sample's correctness.

    Toneva et al. record, for every minibatch, whether each of its samples is
    classified correctly in that forward pass (before the update), so a
    sample's record follows the order in which training presents it.  Row
    ``e`` holds epoch ``e`` (each sample is presented once per epoch); -1
    marks a sample not presented (a dropped batch of one).
    """
    recipe = _scoring_recipe(context, opts)
    x, y = private.x, private.y
    correct = torch.full((recipe.epochs, len(y)), -1, dtype=torch.int8, device=x.device)

    def record(epoch: int, index: torch.Tensor, logits: torch.Tensor) -> None:
        correct[epoch, index] = (logits.argmax(1) == y[index]).to(torch.int8)

    train_classifier(
        context.build_model(stream="coreset-features"), x, y, recipe, context.normalizer, context.seed, context.model_id,
        generators=(context.generator("forgetting-order"), context.generator("forgetting-augment")), on_batch=record,
    )
    return correct
