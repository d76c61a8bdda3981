"""The second threat model: membership attacks on the *released synthetic data*, never the model.

raypriv's model attacks query the model trained on synthetic data.  A
synthetic set is also released ("we share synthetic records instead of the
real ones"), and the field attacks it directly.  Every shadow pipeline of a
run stores its set (``synthetic/<paradigm>/model-<id>.npz``) beside its
private split and the balanced keep matrix, so each statistic of the set is
calibrated per audit sample, leave-one-out, exactly as LiRA calibrates
logits.  The attacks (:data:`RELEASE_ATTACKS`), each a score per (pipeline,
audit sample), higher meaning "more likely IN":

``release_dcr``
    Distance to the closest record (DCR): ``-log(d + 1e-6)``, ``d`` the
    Euclidean distance from the audit sample to its nearest synthetic record
    *of the same label* (the label the models train on, a canary's wrong one;
    soft-label rows by their argmax; every record when the set has none of
    that label).  Records space: images as pixels in 0..1, tabular records
    standardised by the reference set's mean and standard deviation.  The
    privacy metric of SDMetrics and synthcity, used uncalibrated; "The DCR
    Delusion" (Yao et al. 2025) shows why calibration matters.
``release_dcr_feature`` (images)
    The same distance in the feature space of a fixed network
    (:mod:`raypriv.release.features`: a random-init ConvNet by default, or a
    user's ``embed``), as Carlini et al. ("Extracting Training Data from
    Diffusion Models", USENIX Security 2023) search the nearest generated
    image; they use a calibrated L2 in pixel space and CLIP features, we use
    a random network (no data, no download).
``release_density``
    DOMIAS (van Breugel et al., "Membership Inference Attacks against
    Synthetic Data through Overfitting Detection", AISTATS 2023):
    ``log p_syn(x) - log p_ref(x)``, ``p_syn`` a density fitted on the
    pipeline's synthetic set, ``p_ref`` on a *reference set* of population
    samples (the run's ``audit.n_population`` set, else the dataset's whole
    test split; never an audit sample).  Departure: DOMIAS fits BNAF flows
    (its KDE baseline: ``scipy.stats.gaussian_kde``, full covariance);
    raypriv fits isotropic Gaussian KDEs with Scott's factor
    ``n^(-1/(D+4))`` on standardised data (standardised records for tabular
    data, standardised ConvNet features for images), which needs no
    covariance inverse (a 20-record coreset in 30 dimensions has a singular
    one) and no training.  ``benchmarks/release_domias.py`` compares it with
    the ``domias`` package on the same data.
``release_lira`` / ``release_rmia``
    LiRA online and RMIA (:mod:`raypriv.attacks`, the same engines and
    options as the model attacks; scored where the run's ``attacks`` hold
    ``lira_online`` / ``rmia``, so a run limited to ``loss`` for want of
    models gets the raw statistics only) run on the DCR statistic
    ``s = -log(d + 1e-6)`` in place of the logit-scaled confidence: each
    audit sample's IN and OUT distributions of ``s`` come from the other
    shadow pipelines, leave-one-out.  The log makes the distance's
    right-skewed spread closer to LiRA's Gaussians.  For RMIA, ``Pr(x|theta)``
    is ``sigmoid(s) = 1 / (1 + d + 1e-6)``, a kernel that decreases with the
    distance, and ``Pr(x)`` its mean over the reference pipelines; the
    comparison samples ``z`` are the other audit samples (the population set
    is DOMIAS's reference here, so it is not also used as RMIA's ``z``), at
    temperature 1 (there are no logits to temper).  Gen-LRA (Ward et al.
    2025) forms a local likelihood ratio over the nearest synthetic points
    with and without the target in a fitted density; raypriv does not
    implement it: the calibrated DCR plays the local role, calibrated over
    real shadow pipelines instead of a surrogate density.

``release_ngram`` (paradigms that write records as text: dpgen-llm)
    "The Canary's Echo" (Meeus et al. 2025): the audit record's text
    log-likelihood under a smoothed character n-gram model fitted on the
    pipeline's synthetic text (:mod:`raypriv.release.ngram`: order 4,
    Lidstone smoothing), the text recovered from the stored records by the
    paradigm's own public quantizer and serialiser.  Uncalibrated, like
    ``release_dcr``; the paper also calibrates with reference models.

A paradigm that releases no synthetic set (``real``, ``dpsgd``:
``stores_training_set = False``) gets no release rows: its "released data"
would be the private set itself, which any attack identifies perfectly, and
the report says so in one line.  dpgen-llm's records are scored by the
tabular attacks above and, as text, by ``release_ngram``.

The package: :mod:`~raypriv.release.statistics` (distances and densities,
NumPy), :mod:`~raypriv.release.features` (the image feature extractor),
:mod:`~raypriv.release.ngram` (the text model),
:mod:`~raypriv.release.stream` (one stored set at a time to its
statistics, in process or as Ray tasks) and :mod:`~raypriv.release.attacks`
(the table and the calibration through the model attacks' engines).
Scoring them, with the model attacks' metrics, is
:mod:`raypriv.scoring.release`.
"""

from raypriv.release.attacks import (
    RELEASE_ATTACKS,
    THREAT_MODELS,
    ReleaseAttack,
    paradigm_release_attacks,
    release_attack_names,
    release_attack_scores,
    release_headline_order,
    statistics_needed,
)
from raypriv.release.features import FEATURE_SEED, RandomConvNet
from raypriv.release.ngram import NgramModel, RecordText, ngram_statistic
from raypriv.release.statistics import Standardiser, as_records, log_kde, nearest_distances, scott_bandwidth
from raypriv.release.stream import STATISTICS, ReleaseInputs, model_statistics, paradigm_statistics, read_set

__all__ = [
    "FEATURE_SEED",
    "RELEASE_ATTACKS",
    "STATISTICS",
    "THREAT_MODELS",
    "RandomConvNet",
    "ReleaseAttack",
    "NgramModel",
    "RecordText",
    "ReleaseInputs",
    "Standardiser",
    "as_records",
    "log_kde",
    "model_statistics",
    "ngram_statistic",
    "paradigm_release_attacks",
    "nearest_distances",
    "paradigm_statistics",
    "read_set",
    "release_attack_names",
    "release_attack_scores",
    "release_headline_order",
    "scott_bandwidth",
    "statistics_needed",
]
