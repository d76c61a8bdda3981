"""The options of ``distill`` (``paradigm_options.distill``), checked without torch.

What each method does with them is documented in
:mod:`raypriv.synth.distill.matching` (``dm``, ``dc``, ``dsa``) and
:mod:`raypriv.synth.distill.trajectories` (``mtt``, ``datm``).  Fields left
at None take the method's default here, so the recipe hash covers the values
used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raypriv.errors import RayprivError
from raypriv.synth.options import UNHASHED_AT

# Per-method defaults for fields left at None.  The papers run 1,000 (DC/DSA)
# or 20,000 (DM) iterations on a GPU; these fit ~10 s per model on one CPU
# thread on digits.  The learning rates are the papers' (DM: 1.0, DC/DSA: 0.1,
# both SGD with momentum 0.5).  MTT/DATM (5,000 / 10,000 iterations in the
# papers, images at 1,000 / 100 in ZCA space) have no ZCA here: their image
# rates were tuned on digits in normalised space.
DEFAULT_ITERATIONS = {"dm": 300, "dc": 10, "dsa": 10, "mtt": 60, "datm": 60}
DEFAULT_LR_IMAGE = {"dm": 1.0, "dc": 0.1, "dsa": 0.1, "mtt": 100.0, "datm": 100.0}
TRAJECTORY_METHODS = ("mtt", "datm")  # trajectory matching (raypriv.synth.distill.trajectories)
# DATM's loss threshold (the authors' `threshold: 1.0`): an iteration whose matching loss exceeds it changes nothing.
DATM_LOSS_THRESHOLD = 1.0
# FTD experts as DATM's buffer_FTD.py trains them: GSAM with adaptive perturbation of radius 2.0 and alpha 0.4.
FTD_RHO, FTD_ALPHA = 2.0, 0.4

# The DSA transforms raypriv.synth.distill.common implements, and the papers' default strategy (all of them).
DSA_TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _fail(field: str, value: object, allowed: str) -> None:
    raise RayprivError(f"paradigm_options.distill.{field}={value!r} is not allowed; {allowed}")


@dataclass
class DistillOptions:
    method: Literal["dm", "dc", "dsa", "mtt", "datm"] = "dm"
    ipc: int = 10  # synthetic images per class
    init: Literal["real", "noise", "public"] = "real"
    public_path: str | None = None  # .npz with x/y or x_train/y_train (for init: public)
    iterations: int | None = None  # outer iterations; None: the method's default above
    lr_image: float | None = None  # synthetic-image learning rate; None: the paper's
    batch_real: int = 64  # real images per class per matching step (papers: 256)
    outer_loop: int = 10  # dc/dsa: matching steps per network initialisation (paper, ipc 10)
    inner_loop: int = 10  # dc/dsa: network updates on the synthetic set between them (paper: 50 at ipc 10)
    lr_net: float = 0.01  # dc/dsa: learning rate of those network updates (paper)
    dsa_strategy: str = DSA_DEFAULT_STRATEGY  # dm and dsa; "none" switches augmentation off
    embed_arch: Literal["convnet", "model"] = "convnet"
    embed_width: int = 32  # convnet channels (papers: 128)
    embed_depth: int | None = None  # convnet blocks; None: 3 as the papers, fewer for small images (default_depth)
    train_epochs: int | None = 300  # None: the config's train.epochs (see Distill.train)  [papers: 300 DC/DSA/DM, 1000 MTT/DATM]
    # How the audited model trains on the distilled set.  published (mtt/datm only, their default): the papers'
    # evaluation, SGD at the learned step size, momentum 0.9, weight decay 5e-4, x0.1 at half time, DSA
    # (raypriv.synth.distill.common.train_published).  config: the config's train recipe (default for dm/dc/dsa).
    eval_recipe: Literal["published", "config"] | None = field(default=None, metadata={UNHASHED_AT: "config"})
    # mtt / datm (the papers' CIFAR-10 ipc-10 values in brackets; defaults: a CPU budget on digits)
    n_experts: int = 2  # expert networks trained on this model's private set [100]
    expert_train_epochs: int = 10  # epochs per expert, parameters kept after each [50]
    expert_batch: int = 256  # [256]
    lr_teacher: float = 0.01  # the experts' SGD rate, and the initial learnable step size [0.01]
    expert_epochs: int = 2  # M: the student's target is the expert M epochs after its start [2]
    min_start_epoch: int = 0  # start epochs are drawn from min_start_epoch..max_start_epoch (inclusive)
    max_start_epoch: int = 6  # [19: the authors' exclusive bound 20]
    syn_steps: int = 10  # N: differentiable student steps per iteration [MTT 30, DATM 80]
    batch_syn: int | None = None  # synthetic samples per student step; None: all [all]
    lr_lr: float = 1e-5  # SGD rate (momentum 0.5) of the learnable step size [1e-5]
    # Expert training: sgd (MTT's buffer.py) or ftd (sharpness-aware, DATM's buffer_FTD.py: Du et al., CVPR 2023)
    experts: Literal["sgd", "ftd"] = field(default="sgd", metadata={UNHASHED_AT: "sgd"})
    # ftd: perturbation radius (adaptive: scaled by the weights) [2.0]
    ftd_rho: float = field(default=FTD_RHO, metadata={UNHASHED_AT: FTD_RHO})
    # ftd: GSAM's share of the gradient component orthogonal to the perturbed one [0.4]
    ftd_alpha: float = field(default=FTD_ALPHA, metadata={UNHASHED_AT: FTD_ALPHA})
    # An iteration whose matching loss exceeds this changes nothing; None: never skip.  None: 1.0 for datm, off for mtt
    loss_threshold: float | None = field(default=None, metadata={UNHASHED_AT: None})
    # datm only: soft-label logits (SGD, momentum 0.9) and sequential generation
    lr_label: float = 2.0  # [2]
    initial_max_start_epoch: int | None = None  # upper end at the start; None: max_start_epoch // 2 [9: exclusive 10]
    final_min_start_epoch: int | None = None  # lower end at the end; None: min_start_epoch (fixed, as the authors' code)
    expansion_iterations: int | None = None  # iterations over which the upper end rises; None: all [1000]

    def __post_init__(self) -> None:
        # Fill the method-specific defaults here so the recipe hash covers the values used.
        if self.iterations is None:
            self.iterations = DEFAULT_ITERATIONS[self.method]
        if self.lr_image is None:
            self.lr_image = DEFAULT_LR_IMAGE[self.method]
        if self.ipc < 1:
            _fail("ipc", self.ipc, "it must be at least 1")
        if self.iterations < 0:
            _fail("iterations", self.iterations, "it must be at least 0 (0 returns the initialisation)")
        if not self.lr_image > 0:
            _fail("lr_image", self.lr_image, "it must be positive")
        if self.batch_real < 1:
            _fail("batch_real", self.batch_real, "it must be at least 1")
        if self.outer_loop < 1:
            _fail("outer_loop", self.outer_loop, "it must be at least 1")
        if self.inner_loop < 0:
            _fail("inner_loop", self.inner_loop, "it must be at least 0")
        if not self.lr_net > 0:
            _fail("lr_net", self.lr_net, "it must be positive")
        if self.embed_width < 1:
            _fail("embed_width", self.embed_width, "it must be at least 1")
        if self.embed_depth is not None and self.embed_depth < 1:
            _fail("embed_depth", self.embed_depth, "it must be at least 1, or null for automatic")
        if self.train_epochs is not None and self.train_epochs < 1:
            _fail("train_epochs", self.train_epochs, "it must be at least 1, or null for the config's train.epochs")
        self._check_dsa_strategy()
        self._check_trajectory_options()
        if self.init == "public" and self.public_path is None:
            raise RayprivError(
                "paradigm_options.distill.init='public' needs paradigm_options.distill.public_path "
                "(an .npz file with x/y or x_train/y_train); set public_path or use init: real or noise"
            )

    def _check_dsa_strategy(self) -> None:
        if self.dsa_strategy == "none":
            return
        unknown = [t for t in self.dsa_strategy.split("_") if t not in DSA_TRANSFORMS]
        if unknown or not self.dsa_strategy:
            _fail(
                "dsa_strategy",
                self.dsa_strategy,
                f"give transforms from {list(DSA_TRANSFORMS)} joined by '_' (e.g. {DSA_DEFAULT_STRATEGY!r}), or 'none'",
            )

    def _resolve_trajectory_defaults(self) -> None:
        """Fill the fields whose default depends on the method, so the recipe hash covers the values used."""
        if self.initial_max_start_epoch is None:
            self.initial_max_start_epoch = self.max_start_epoch // 2 if self.method == "datm" else self.max_start_epoch
        if self.final_min_start_epoch is None:
            self.final_min_start_epoch = self.min_start_epoch
        if self.eval_recipe is None:
            self.eval_recipe = "published" if self.method in TRAJECTORY_METHODS else "config"
        if self.loss_threshold is None and self.method == "datm":
            self.loss_threshold = DATM_LOSS_THRESHOLD

    def _check_trajectory_options(self) -> None:
        self._resolve_trajectory_defaults()
        if self.method not in TRAJECTORY_METHODS:
            if self.eval_recipe == "published":
                raise RayprivError(
                    f"paradigm_options.distill.eval_recipe='published' is not implemented for method {self.method!r} "
                    "(only for mtt and datm, whose evaluation uses their learned step size); use eval_recipe: config"
                )
            return
        for name in ("n_experts", "expert_train_epochs", "expert_batch", "expert_epochs", "syn_steps"):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "it must be at least 1")
        for name in ("lr_teacher", "lr_lr", "lr_label", "ftd_rho"):
            if not getattr(self, name) > 0:
                _fail(name, getattr(self, name), "it must be positive")
        self._check_published_options()
        if self.batch_syn is not None and self.batch_syn < 1:
            _fail("batch_syn", self.batch_syn, "it must be at least 1, or null for the whole synthetic set")
        if self.expansion_iterations is not None and self.expansion_iterations < 1:
            _fail("expansion_iterations", self.expansion_iterations, "it must be at least 1, or null for all")
        if not 0 <= self.min_start_epoch <= self.max_start_epoch:
            _fail("min_start_epoch", self.min_start_epoch, f"it must be in 0..max_start_epoch={self.max_start_epoch}")
        if self.max_start_epoch + self.expert_epochs > self.expert_train_epochs:
            raise RayprivError(
                f"paradigm_options.distill.expert_epochs={self.expert_epochs} with max_start_epoch="
                f"{self.max_start_epoch} reaches epoch {self.max_start_epoch + self.expert_epochs}, beyond the "
                f"expert trajectories of expert_train_epochs={self.expert_train_epochs} epochs; lower "
                "max_start_epoch or expert_epochs, or raise expert_train_epochs so that "
                "max_start_epoch + expert_epochs <= expert_train_epochs"
            )
        if self.method == "datm":
            if not self.min_start_epoch <= self.initial_max_start_epoch <= self.max_start_epoch:
                _fail(
                    "initial_max_start_epoch", self.initial_max_start_epoch,
                    f"it must lie in min_start_epoch..max_start_epoch ({self.min_start_epoch}..{self.max_start_epoch})",
                )
            if not self.min_start_epoch <= self.final_min_start_epoch <= self.max_start_epoch:
                _fail(
                    "final_min_start_epoch", self.final_min_start_epoch,
                    f"it must lie in min_start_epoch..max_start_epoch ({self.min_start_epoch}..{self.max_start_epoch})",
                )

    def _check_published_options(self) -> None:
        """FTD's and DATM's options (the authors' defaults: raypriv.synth.distill.trajectories)."""
        if not 0 <= self.ftd_alpha <= 1:
            _fail("ftd_alpha", self.ftd_alpha, "it must lie in 0..1 (0: plain adaptive SAM)")
        if self.loss_threshold is not None and not self.loss_threshold > 0:
            _fail("loss_threshold", self.loss_threshold, "it must be positive, or null (datm: 1.0; mtt: never skip)")

    @property
    def strategy(self) -> tuple[str, ...]:
        """The DSA transforms this method uses: none for plain DC (as in its paper)."""
        if self.method == "dc" or self.dsa_strategy == "none":
            return ()
        return tuple(self.dsa_strategy.split("_"))
