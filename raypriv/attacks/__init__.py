"""Membership-inference attacks, leave-one-out over all models.

Every model in turn is the *target*; all the other models are its shadows.
Each attack returns a membership score per (target model, audit sample),
higher meaning "more likely IN".

Choices, following the reference LiRA code (tensorflow/privacy,
``research/mi_lira_2021``; Carlini et al., "Membership Inference Attacks From
First Principles", S&P 2022):

* **Score.** ``s = log p_y - log sum_{y' != y} p_y'`` (the "logit-scaled
  confidence"), in float64 after subtracting the max logit.  Clamped at
  1e-45 inside the logs, as in the reference, so it stays finite.
* **Conventions** (``lira.preset``, :class:`LiraOptions`): ``carlini-2022``
  (the default) centres the IN and OUT Gaussians on the *median* over
  shadows, with ``np.std`` (ddof 0), plus 1e-30, and equal group sizes (the
  truncation below); ``aerni-2024`` (Aerni et al., CCS 2024) takes the
  *mean*, ddof 1 and every other model as a shadow (no truncation).
  ``lira.center: mean`` alone keeps raypriv's older meaning (only the
  centre changes).
* **One Gaussian per augmentation query**; the per-query log-likelihoods
  (or ratios) are averaged over queries.
* **Online** (``lira_online``): ``mean_q [log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out)]``.
* **Offline** (``lira_offline``): ``mean_q [-log N(s; mu_out, sd_out)]``,
  the OUT log-pdf as in the reference (a two-sided test: it also flags
  scores far *below* the OUT mean).
* **Fixed variance** (``*_fixed``): one standard deviation per query for the
  IN side and one for the OUT side, pooled over all audit samples as the
  root mean of the per-sample variances.  This is the LiRA paper's "global
  variance".  The reference script instead takes ``np.std`` of all IN scores
  (mixing in the spread of per-sample means) and uses it for OUT too; we keep
  IN and OUT apart and leave out the between-sample spread.
* **Leave-one-out**: the target's own score is removed from its shadow
  statistics (medians by rank arithmetic on the sorted scores, std from
  running sums).  Every group then has ``n_models/2 - 1`` shadows: where the
  target is not in a group, that group drops its highest model id instead,
  like the reference's truncation of all groups to the smallest size.
  (Unequal sizes bias ddof-0 variances and push a no-signal AUC below 0.5
  at small model counts.)  ``aerni-2024`` does not truncate: its ddof-1
  variances are unbiased at either size.
* **Loss** (``loss``, Yeom et al. 2018): minus the cross-entropy of the
  target on the un-augmented query (query 0).  It uses no shadows.
* **RMIA** (``rmia``, Zarifzadeh et al., "Low-Cost High-Power Membership
  Inference Attacks", ICML 2024), online variant, as the authors' code runs
  it (:mod:`raypriv.attacks.rmia` lists its settings and every departure).
  ``Pr(x|theta)`` is the target's softmax probability of the audit label
  (at temperature ``rmia.temperature``), per query; ``Pr(x)`` is its
  trimmed mean (``rmia.trim``, 0.2) over the same leave-one-out shadows as
  LiRA's (``n_models/2 - 1`` IN and ``n_models/2 - 1`` OUT, the paper's
  online estimate).  ``x`` beats ``z`` on a query when
  ``[Pr(x|theta)/Pr(x)] / [Pr(z|theta)/Pr(z)] > gamma`` (``rmia.gamma``, 1);
  the queries vote (``rmia.queries: vote``) and the score is the share of
  ``z`` that ``x`` beats.  Without ``audit.n_population``, ``z`` runs over
  *all the other audit samples*, ``Pr(z)`` from the same target's
  leave-one-out shadows: nothing the attacker could not know, but about half
  of those ``z`` are members, a harder comparison set than the paper's.
* **RMIA offline** (``rmia_offline``): the paper's linear approximation
  ``Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2`` from the trimmed leave-one-out
  OUT mean, with the same ``rmia`` settings.
  ``a`` is fitted as in the paper: reference models attacked with OUT
  references, the ``a`` in 0, 0.1, ..., 1 of highest AUC, cross-fitted over
  two folds of model ids, so a target's own scores and membership never enter.
  ``Pr(x|theta)`` is computed as ``sigmoid(s)``, which equals ``p_y`` (up to
  the 1e-45 floors) and keeps ``1 - p_y`` for confident samples that a
  float32 probability would round to 1.

**The package.**  One module a concern, no file I/O (reading logits is
:mod:`raypriv.scoring.read`'s job):

* :mod:`raypriv.attacks.engine`: the table :data:`ATTACKS` (a new attack is
  one entry plus its function) and :func:`score_attacks`, which walks blocks
  of audit samples (pass 2 of scoring);
* :mod:`raypriv.attacks.block`: :class:`SampleBlock`, every model's scores for
  one block and the leave-one-out statistics the attacks share;
* :mod:`raypriv.attacks.lira` and :mod:`raypriv.attacks.rmia`: each family's
  formulas (:func:`reduce_logits` is pass 1: one model's logits to the
  per-query LiRA score ``s`` and the loss, float32, ``C`` times smaller);
* :mod:`raypriv.attacks.reference`: whole-array float64 versions that read
  like the definitions, for the tests; the audit never imports it.
"""

from raypriv.attacks.block import LIRA_PRESETS, LiraOptions, SampleBlock
from raypriv.attacks.engine import (
    ATTACKS,
    Attack,
    attack_channels,
    check_attacks,
    group_sizes,
    has_rmia,
    headline_order,
    lira_queries,
    map_threads,
    pooled_probability,
    run_attacks,
    score_attacks,
    staged_queries,
)
from raypriv.attacks.lira import reduce_logits, to_float32
from raypriv.attacks.rmia import RMIA_GAMMA, RMIA_QUERIES, RmiaOptions, tempered_scores

__all__ = [
    "ATTACKS",
    "Attack",
    "LIRA_PRESETS",
    "LiraOptions",
    "RMIA_GAMMA",
    "RMIA_QUERIES",
    "RmiaOptions",
    "SampleBlock",
    "attack_channels",
    "check_attacks",
    "group_sizes",
    "has_rmia",
    "headline_order",
    "lira_queries",
    "map_threads",
    "pooled_probability",
    "reduce_logits",
    "run_attacks",
    "score_attacks",
    "staged_queries",
    "tempered_scores",
    "to_float32",
]
