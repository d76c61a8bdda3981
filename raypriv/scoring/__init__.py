"""Scoring: the attacks on a run's stored logits, and their metrics, in bounded memory.

* :mod:`raypriv.scoring.plan`: :class:`ScoringPlan`, the sizes, attacks,
  options and backend, fixed once by the driver;
* :mod:`raypriv.scoring.score`: :func:`score_run`, every paradigm through
  one backend, then ``metrics.json``;
* two backends with the same two functions (``open_output``,
  ``score_paradigm``): :mod:`raypriv.scoring.local` (one process) and
  :mod:`raypriv.scoring.ray_data` (Ray Data tasks; its metrics from range
  partitions: the maths in :mod:`raypriv.scoring.partitions`, the tasks in
  :mod:`raypriv.scoring.ray_metrics`);
* :mod:`raypriv.scoring.read`: a model's logits reduced as they are read;
* :mod:`raypriv.scoring.outputs`: what both backends share (the recipe
  check, the model rows' metrics, the metrics files);
* :mod:`raypriv.scoring.logits_dataset`: a run's logits as a Ray Dataset,
  for analysis.

Importing this package loads neither torch nor Ray.
"""

from raypriv.scoring.plan import ScoringPlan, choose_backend
from raypriv.scoring.score import score_run

__all__ = ["ScoringPlan", "choose_backend", "score_run"]
