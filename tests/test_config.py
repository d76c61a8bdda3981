from pathlib import Path

import pytest

from raypriv.config import ExperimentConfig, check_names
from raypriv.config import from_dict as config_from_dict
from raypriv.config import load as load_config
from raypriv.errors import RayprivError
from raypriv.run.fingerprints import config_hash

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_digits_quick_config():
    packaged = load_config(ROOT / "jobs/configs/digits-quick.yaml")
    assert packaged.to_dict() == load_config().to_dict() == check_names(ExperimentConfig()).to_dict()


def test_cifar10_reference_config_is_the_reference_protocol():
    config = load_config(ROOT / "jobs/configs/cifar10-real.yaml")
    assert config.dataset.name == "cifar10"
    assert config.audit.n_audit == 500 and config.audit.canary == "mislabel"
    assert config.n_models >= 64 and config.model.arch in ("resnet18", "wrn16_4")
    assert len(config.queries) == 18 and config.queries[:2] == ["identity", "shift(-4,0)"]  # flip-shift-18
    assert config.train.augment == "flip_crop" and config.train.crop_padding == 4


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"train": {"epoch": 3}}, "unknown field 'train.epoch'; allowed fields here: engine, epochs"),
        (
            {"model": {"arch": "vgg"}},
            "model.arch='vgg' is not allowed; choose one of ['mlp', 'cnn_small', 'resnet18', 'wrn16_4', 'logreg']",
        ),
        ({"train": {"epochs": "ten"}}, "train.epochs must be an integer"),
        ({"train": {"amp": "yes"}}, "train.amp must be true or false"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name='imagenet' is not a known dataset; choose one of"),
        (
            {"paradigms": ["real", "magic"]},
            "paradigm 'magic' is not known; choose from "
            "['coreset', 'dfkd', 'diffusion', 'distill', 'dpgen-llm', 'dpgen-marginals', 'dpsgd', 'external', 'real']",
        ),
        ({"attacks": ["lira"]}, "attack 'lira' is not known"),
        ({"queries": ["rotate"]}, "query 'rotate' is not known"),
        ({"n_models": 9}, "n_models=9: it must be even"),
        ({"n_models": 4}, "n_models=4 is too few for LiRA"),
        ({"audit": {"n_audit": 0}}, "audit.n_audit must be at least 1"),
        ({"dataset": {"name": "npz"}}, "dataset.path is not set"),
        ({"ray": {"num_gpus_per_actor": -1}}, "ray.num_gpus_per_actor must be zero"),
        ({"paradigm_options": {"real": {"k": 1}}}, "unknown field 'paradigm_options.real.k'"),
        ({"audit": 5}, "audit must be a mapping"),
    ],
)
def test_wrong_fields_get_clear_errors(raw, expected):
    with pytest.raises(RayprivError) as error:
        config_from_dict(raw)
    assert expected in str(error.value)


def test_loss_only_audit_allows_two_models():
    assert config_from_dict({"n_models": 2, "attacks": ["loss"]}).n_models == 2


def test_overrides_and_comma_lists():
    config = load_config(None, {"n_models": 16, "paradigms": "real", "seed": 3, "out_dir": "x", "train.epochs": None})
    assert (config.n_models, config.paradigms, config.seed, config.out_dir) == (16, ["real"], 3, "x")
    assert config.train.epochs == ExperimentConfig().train.epochs  # None means "not given"


def test_hash_covers_results_but_not_execution():
    base = config_hash(config_from_dict({}))
    assert base == config_hash(config_from_dict({"out_dir": "elsewhere", "ray": {"num_actors": 7}, "attacks": ["loss"]}))
    assert base != config_hash(config_from_dict({"train": {"epochs": 16}}))
    assert base != config_hash(config_from_dict({"seed": 1}))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RayprivError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(RayprivError, match="not valid YAML"):
        load_config(bad)


def test_paradigms_override_selects_among_the_files_paradigms():
    config = load_config(ROOT / "jobs/configs/digits-paradigms.yaml", {"paradigms": "real,dpsgd@eps1"})
    assert config.paradigms == ["real", "dpsgd@eps1"] and list(config.paradigm_options) == ["dpsgd@eps1"]
    with pytest.raises(RayprivError, match="paradigm_options has options for 'dpsgd'"):
        config_from_dict({"paradigms": ["real"], "paradigm_options": {"dpsgd": {}}})
