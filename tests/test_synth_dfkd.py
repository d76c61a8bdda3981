"""Data-free knowledge distillation (``dfkd``): DeepInversion and DFAD."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.split import make_audit_split
from raypriv.synth import LabeledSet, ShadowContext, build_options
from raypriv.synth.deepinversion import BatchNormStatistics, deep_inversion, synthesize_deepinversion
from raypriv.synth.dfad import Generator, adversarial_distillation
from raypriv.synth.dfkd import DataFreeKD, train_teacher
from raypriv.synth.options import DFKDOptions
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

# Small budgets: each test runs in about a second on one core.
FAST_DI = {"teacher_epochs": 10, "n_synthetic": 60, "iterations": 8, "batch_size": 30}
FAST_DFAD = {
    "method": "dfad", "teacher_epochs": 10, "n_synthetic": 40, "steps": 12, "student_steps": 2, "batch_size": 32,
    "generator_width": 8, "latent_dim": 16,
}


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DatasetConfig())
    return data, make_audit_split(data, 40, "mislabel", 8, 0), Normalizer.fit(data.x_train)


def make_context(digits, tmp_path, model_id=0, options=None, **overrides):
    """A shadow context and private set for model ``model_id`` of the tiny digits config."""
    data, split, normalizer = digits
    raw = tiny_config_dict(tmp_path / "run", paradigms=["dfkd"], **overrides)
    if options:
        raw["paradigm_options"] = {"dfkd": options}
    config = config_from_dict(raw)
    index = split.private_indices(model_id)
    private = LabeledSet(torch.tensor(data.x_train)[index], torch.tensor(split.labels)[index])
    context = ShadowContext(config, "dfkd", model_id, data.num_classes, data.input_shape, normalizer, torch.device("cpu"))
    return context, private, DataFreeKD(build_options("dfkd", options))


def bn_loss_curve(teacher, context, bn_weight):
    options = DFKDOptions(iterations=30, bn_weight=bn_weight)
    targets = torch.arange(40) % 10
    _, curve = deep_inversion(teacher, targets, context.input_shape, options, context, torch.Generator().manual_seed(0))
    return curve


def test_deepinversion_matches_batchnorm_statistics(digits, tmp_path):
    torch.manual_seed(0)
    context, private, _ = make_context(digits, tmp_path)
    teacher = train_teacher(private, context, epochs=10)
    with_bn, without_bn = bn_loss_curve(teacher, context, 1.0), bn_loss_curve(teacher, context, 0.0)
    assert with_bn[-1] < 0.3 * with_bn[0]  # R_feature falls far from noise's start
    assert with_bn[-1] < 0.5 * without_bn[-1]  # ... because it is optimised, not by cross-entropy alone
    assert without_bn[0] == pytest.approx(with_bn[0])  # same start: same noise


def test_deepinversion_matches_batchnorm1d_statistics_of_a_tabular_mlp(digits, tmp_path):
    torch.manual_seed(0)
    context, private, _ = make_context(digits, tmp_path, **{"model.arch": "mlp", "model.width": 32})
    context.input_shape = (64,)  # digits as 64 raw features
    flat = LabeledSet(private.x.flatten(1).float() / 255.0, private.y)
    context.normalizer = Normalizer.fit(flat.x.numpy())
    teacher = train_teacher(flat, context, epochs=10)
    targets, rng = torch.arange(40) % 10, torch.Generator().manual_seed(0)
    x, curve = deep_inversion(teacher, targets, (64,), DFKDOptions(iterations=30), context, rng)
    assert x.shape == (40, 64) and curve[-1] < 0.3 * curve[0]


def test_deepinversion_inputs_have_the_right_shape_and_balanced_targets(digits, tmp_path):
    context, private, paradigm = make_context(digits, tmp_path, options={**FAST_DI, "iterations": 20})
    teacher = train_teacher(private, context, epochs=10)
    x, targets = synthesize_deepinversion(teacher, paradigm.options, context)
    assert x.shape == (60, 1, 8, 8) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(torch.bincount(targets, minlength=10), torch.full((10,), 6))
    for batch in torch.tensor_split(targets, 2):  # each optimised batch holds every class equally
        assert torch.equal(torch.bincount(batch, minlength=10), torch.full((10,), 3))
    with torch.no_grad():
        agreement = (teacher(context.normalizer(x)).argmax(1) == targets).float().mean()
    assert agreement > 0.9  # the teacher sees the class each input was made for

    training_set = paradigm.synthesize(private, context)
    assert training_set.x.shape == (60, 1, 8, 8)
    assert training_set.y.shape == (60, 10) and training_set.y.dtype == torch.float32
    torch.testing.assert_close(training_set.y.sum(1), torch.ones(60))


def test_deepinversion_needs_a_batchnorm_teacher(digits, tmp_path):
    context, private, paradigm = make_context(digits, tmp_path, **{"model.norm": "group"})
    with pytest.raises(RayprivError, match="model.norm: batch"):
        paradigm.synthesize(private, context)  # refused before a teacher is trained
    with pytest.raises(RayprivError, match="no BatchNorm layer; set model.norm: batch"):
        BatchNormStatistics(context.build_model())


def test_options_are_validated(digits, tmp_path):
    with pytest.raises(RayprivError, match=r"paradigm_options\.dfkd\.temperature=0"):
        build_options("dfkd", {"temperature": 0})
    with pytest.raises(RayprivError, match=r"paradigm_options\.dfkd\.batch_size"):
        build_options("dfkd", {"batch_size": 1})
    with pytest.raises(RayprivError, match="method"):
        build_options("dfkd", {"method": "gan"})
    context, private, paradigm = make_context(digits, tmp_path, options={"n_synthetic": 5, "teacher_epochs": 1})
    with pytest.raises(RayprivError, match="n_synthetic=5 is fewer than the 10 classes"):
        paradigm.synthesize(private, context)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_dfad_generator_makes_images_in_pixel_range(shape):
    torch.manual_seed(0)
    mean, std = torch.full((1, shape[0], 1, 1), 0.3), torch.full((1, shape[0], 1, 1), 0.2)
    generator = Generator(latent_dim=16, width=8, shape=shape, normalizer=Normalizer(mean, std))
    x = generator(torch.randn(64, 16))
    assert x.shape == (64, *shape)
    assert 0.0 <= x.min() and x.max() <= 1.0
    # The affine-free output BatchNorm gives each batch the data's pixel mean and spread (up to the clamp).
    assert abs(x.mean() - 0.3) < 0.05 and 0.1 < x.std() < 0.25


def test_dfad_student_learns_the_teacher_on_generated_inputs(digits, tmp_path):
    torch.manual_seed(0)
    context, private, _ = make_context(digits, tmp_path)
    teacher = train_teacher(private, context, epochs=10)
    student = context.build_model()
    untrained = copy.deepcopy(student)
    options = build_options("dfkd", {**FAST_DFAD, "steps": 40})
    generator, losses = adversarial_distillation(teacher, student, options, context)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])  # the student's L1 falls over the game
    with torch.no_grad():
        x = context.normalizer(generator(torch.randn(256, 16)))
        target = teacher(x)
        untrained.train()  # compare both as the game saw the student (batch statistics)
        assert F.l1_loss(student(x), target) < 0.5 * F.l1_loss(untrained(x), target)


def test_dfad_generator_seeks_disagreement(digits, tmp_path):
    torch.manual_seed(0)
    context, private, _ = make_context(digits, tmp_path)
    teacher = train_teacher(private, context, epochs=10)
    frozen = build_options("dfkd", {**FAST_DFAD, "steps": 30, "student_steps": 1, "student_lr": 1e-9, "generator_lr": 1e-2})
    _, losses = adversarial_distillation(teacher, context.build_model(), frozen, context)
    assert np.mean(losses[-5:]) > 1.5 * np.mean(losses[:5])  # against a fixed student the L1 only grows


def test_dfad_needs_images(digits, tmp_path):
    context, private, paradigm = make_context(digits, tmp_path, options=FAST_DFAD)
    context.input_shape = (64,)  # as for a tabular dataset
    with pytest.raises(RayprivError, match="method: deepinversion"):
        paradigm.synthesize(LabeledSet(private.x.flatten(1).float(), private.y), context)


@pytest.mark.parametrize("options", [FAST_DI, FAST_DFAD], ids=["deepinversion", "dfad"])
def test_the_student_never_receives_private_inputs(digits, tmp_path, options):
    context, private, paradigm = make_context(digits, tmp_path, options=options)
    private_rows = context.normalizer(private.x).flatten(1)
    seen = {"student": [], "teacher": []}
    built = {"student": [], "teacher": []}
    trained_on = []
    build_model, train_classifier = context.build_model, context.train_classifier

    def spy_build(model=None, stream="init"):
        network = build_model(model, stream)
        role = "student" if stream == "init" else "teacher"  # "init": the audited model's init
        built[role].append(network)
        network.register_forward_pre_hook(lambda module, args: seen[role].append(args[0].detach().flatten(1).clone()))
        return network

    def spy_train(model, training_set, train=None):
        trained_on.append((model, training_set.x))
        return train_classifier(model, training_set, train)

    context.build_model, context.train_classifier = spy_build, spy_train
    student = paradigm.train(paradigm.synthesize(private, context), context)

    assert len(built["student"]) == 1 and student is built["student"][0]
    for model, x in trained_on:  # private data goes into training calls of the teacher only
        if x is private.x:
            assert model in built["teacher"]
    student_inputs = torch.cat(seen["student"])
    assert len(student_inputs) >= options["n_synthetic"]
    assert torch.cdist(student_inputs, private_rows).min() > 1e-3  # no private input ever reached the student
    # The spy does see private inputs where they go: into the teacher.
    assert torch.cdist(torch.cat(seen["teacher"])[:2000], private_rows).min() < 1e-5


def test_only_deepinversion_may_synthesize_in_another_process():
    # DFAD hands the student it trained during synthesis to train(): the runner must not split the stages.
    assert DataFreeKD(build_options("dfkd", FAST_DI)).separable_synthesis
    assert not DataFreeKD(build_options("dfkd", FAST_DFAD)).separable_synthesis
    with pytest.raises(RuntimeError, match="without synthesize"):
        DataFreeKD(build_options("dfkd", FAST_DFAD)).train(None, None)


@pytest.mark.parametrize("options", [FAST_DI, FAST_DFAD], ids=["deepinversion", "dfad"])
def test_synthetic_set_is_reproducible_per_model(digits, tmp_path, options):
    def synthetic(model_id):
        torch.manual_seed(123 + model_id)  # the global RNG must not matter
        context, private, paradigm = make_context(digits, tmp_path, model_id, options={**options, "teacher_epochs": 2})
        return paradigm.synthesize(private, context)

    first, again, other = synthetic(3), synthetic(3), synthetic(2)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert not torch.equal(first.x, other.x)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options, recipe",
    [
        # DeepInversion's student trains by the config's recipe: give it enough SGD steps to learn.
        ({**FAST_DI, "n_synthetic": 300, "iterations": 10, "batch_size": 100}, {"train.epochs": 10, "train.batch_size": 32}),
        (FAST_DFAD, {}),
    ],
    ids=["deepinversion", "dfad"],
)
def test_dfkd_end_to_end(tmp_path, options, recipe):
    raw = tiny_config_dict(tmp_path / "run", paradigms=["dfkd"], attacks=["loss"], **recipe)
    raw["paradigm_options"] = {"dfkd": options}
    result = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    assert len(result.models) == 8
    for model_id in (0, 7):
        stored = np.load(tmp_path / "run" / "synthetic" / "dfkd" / f"model-{model_id:06d}.npz")
        assert stored["x"].shape == (options["n_synthetic"], 1, 8, 8) and stored["x"].dtype == np.float32
        assert 0.0 <= stored["x"].min() and stored["x"].max() <= 1.0
        assert stored["y"].shape == (options["n_synthetic"], 10)
        np.testing.assert_allclose(stored["y"].sum(1), 1.0, rtol=1e-5)
    info = [json.loads(row) for row in result.models["info"]]
    if options.get("method") == "dfad":
        assert all(row["l1_end"] < row["l1_start"] for row in info)  # (a dozen steps: too few to beat chance)
    else:
        assert all(row["bn_loss_end"] < 0.5 * row["bn_loss_start"] for row in info)
        assert all(row["teacher_target_agreement"] > 0.9 for row in info)
        assert result.models.test_acc.mean() > 0.25  # well above chance (0.1), though no private input was trained on


def test_teacher_arch_is_an_option_defaulting_to_the_audited_model(digits, tmp_path):
    from raypriv.config import ModelConfig
    from raypriv.synth.dfkd import teacher_model

    audited = ModelConfig(arch="cnn_small", width=8, norm="batch")
    assert teacher_model(DFKDOptions(), audited) is None  # the audited model's architecture, as before
    assert teacher_model(DFKDOptions(teacher_arch="mlp"), audited) == ModelConfig(arch="mlp", width=None, norm="batch")
    assert teacher_model(DFKDOptions(teacher_width=4), audited) == ModelConfig(arch="cnn_small", width=4, norm="batch")
    with pytest.raises(RayprivError, match=r"paradigm_options\.dfkd\.teacher_arch='vgg'"):
        build_options("dfkd", {"teacher_arch": "vgg"})

    # A teacher of another architecture (an MLP on digits) drives DeepInversion; the student stays cnn_small.
    options = {**FAST_DI, "teacher_arch": "mlp", "teacher_width": 32}
    context, private, paradigm = make_context(digits, tmp_path, options=options)
    teacher = train_teacher(private, context, 2, teacher_model(paradigm.options, context.config.model))
    assert not any(isinstance(m, torch.nn.Conv2d) for m in teacher.modules())
    synthetic = paradigm.synthesize(private, context)
    assert synthetic.x.shape == (60, 1, 8, 8) and synthetic.y.shape == (60, 10)
    student = paradigm.train(synthetic, context)
    assert any(isinstance(m, torch.nn.Conv2d) for m in student.modules())
