"""``real``: the baseline that trains on the private set itself."""

from __future__ import annotations

from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext


class RealData(Paradigm):
    name = "real"
    stores_training_set = False  # the training set is the private set

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        return private
