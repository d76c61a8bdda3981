"""The differentially private generators of tabular records: ``dpgen-marginals`` and ``dpgen-llm``.

* :mod:`~raypriv.synth.dpgen.options`: the options of both and their checks (no torch: the config
  checks and ``raypriv paradigms`` read them);
* :mod:`~raypriv.synth.dpgen.common`: what both share, the privacy accounting (zCDP and pure DP)
  and the data-independent bins;
* :mod:`~raypriv.synth.dpgen.marginals`: ``dpgen-marginals``, noisy label-conditional marginals;
* :mod:`~raypriv.synth.dpgen.llm`: ``dpgen-llm``, DP few-shot generation with a causal language
  model, which :mod:`~raypriv.synth.dpgen.language_models` loads.
"""
