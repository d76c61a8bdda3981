"""``distill``: dataset distillation (condensation) of each private set into ``ipc`` images per class.

* :mod:`~raypriv.synth.distill.options`: its options and their checks (no torch: the config checks and
  ``raypriv paradigms`` read them);
* :mod:`~raypriv.synth.distill.matching`: the paradigm, and distribution and gradient matching
  (``dm``, ``dc``, ``dsa``);
* :mod:`~raypriv.synth.distill.trajectories`: trajectory matching (``mtt``, ``datm``);
* :mod:`~raypriv.synth.distill.common`: what the methods share (DSA augmentation, the ConvNet, real
  batches, initial images).
"""
