"""``diffusion``: train (or fine-tune) a class-conditional diffusion model on each private set, sample from it.

* :mod:`~raypriv.synth.diffusion.options`: its options and their checks (no torch: the config checks and
  ``raypriv paradigms`` read them);
* :mod:`~raypriv.synth.diffusion.paradigm`: the paradigm, one short sequence of the steps below;
* :mod:`~raypriv.synth.diffusion.unet`: the small class-conditional ``UNet2DModel``
  trained from scratch (``pipeline: unet``), sampled or run as img2img (SDEdit);
* :mod:`~raypriv.synth.diffusion.packed`: K UNet pipelines trained and sampled at once (``execution.pack``);
* :mod:`~raypriv.synth.diffusion.stable_diffusion`: a local Stable Diffusion model fine-tuned instead
  (``pipeline: stable-diffusion``).
"""
