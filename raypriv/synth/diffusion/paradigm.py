"""The ``diffusion`` paradigm: a denoiser trained on each private set, then sampled (or run as img2img).

The steps live beside it: :mod:`~raypriv.synth.diffusion.unet` (the small
class-conditional UNet trained from scratch, its sampler and img2img),
:mod:`~raypriv.synth.diffusion.packed` (K UNet pipelines at once, for
``execution.pack``) and :mod:`~raypriv.synth.diffusion.stable_diffusion`
(a local Stable Diffusion fine-tuned instead, imported only when used).
"""

from __future__ import annotations

from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.diffusion.options import DiffusionOptions
from raypriv.synth.diffusion.packed import synthesize_unet_pack, unet_pack_memory_bytes, unet_packable
from raypriv.synth.diffusion.unet import (
    check_private_images,
    finish_unet_pipeline,
    img2img_images,
    img2img_sources,
    prepare_unet_pipeline,
    sample_images,
    sample_labels,
    train_denoiser,
)


class Diffusion(Paradigm):
    name = "diffusion"
    Options = DiffusionOptions

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        options: DiffusionOptions = self.options
        check_private_images(private, context.num_classes)
        img2img = options.generation == "img2img"
        # The private images img2img starts from: one draw, for either pipeline.
        sources = img2img_sources(len(private), options, context.generator("img2img-sources")) if img2img else None
        if options.pipeline == "stable-diffusion":
            from raypriv.synth.diffusion.stable_diffusion import synthesize_stable_diffusion

            return synthesize_stable_diffusion(private, context, options, sources)
        pipeline = prepare_unet_pipeline(private, context, options, sources)
        if isinstance(pipeline, LabeledSet):
            return pipeline
        unet, x0, labels, null_class = pipeline.unet, pipeline.x0, pipeline.labels, pipeline.null_class

        losses = train_denoiser(unet, x0, labels, options, null_class, context.generator("train"))

        if img2img:
            index = sources.to(context.device)
            synthetic_labels = labels[index]
            images = img2img_images(unet, x0[index], synthetic_labels, options, null_class, context.generator("sample"))
        else:
            synthetic_labels = sample_labels(len(private), context, options)
            images = sample_images(
                unet, synthetic_labels, tuple(x0.shape[1:]), options, null_class, context.generator("sample")
            )
        return finish_unet_pipeline(images, synthetic_labels, sum(p.numel() for p in unet.parameters()), losses, context)

    # ------------------------------------------------------------ packs

    def packs_synthesis(self) -> bool:
        """Whether these options have a batched pack (:func:`raypriv.synth.diffusion.packed.unet_packable`).

        The UNet trained from scratch and sampled from noise does; Stable
        Diffusion, a pretrained UNet and img2img run one pipeline at a time.
        """
        return unet_packable(self.options)

    def packs_bit_exact(self) -> bool:
        """False: a packed UNet's set is its single run's to ~1e-5, not bit for bit, so ``auto`` packs it on a GPU only."""
        return False

    def synthesize_pack(self, privates: list[LabeledSet], contexts: list[ShadowContext]) -> list[LabeledSet | Exception]:
        """K UNet pipelines trained and sampled at once (:func:`raypriv.synth.diffusion.packed.synthesize_unet_pack`)."""
        if not unet_packable(self.options):  # only called where packs_synthesis() said True
            return super().synthesize_pack(privates, contexts)
        return synthesize_unet_pack(self.options, privates, contexts)

    def pack_memory_bytes(self, input_shape: tuple[int, ...], num_classes: int, private_size: int) -> int:
        """One packed UNet pipeline's working memory (:func:`raypriv.synth.diffusion.packed.unet_pack_memory_bytes`)."""
        return unet_pack_memory_bytes(self.options, tuple(input_shape), num_classes, private_size)
