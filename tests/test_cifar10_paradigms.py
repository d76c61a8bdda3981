"""jobs/configs/cifar10-paradigms.yaml: it loads as written, and a shortened copy runs end to end on fake CIFAR-10."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from raypriv.config import load as load_config
from raypriv.queries import expand_queries
from raypriv.synth import make_paradigm

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "cifar10-paradigms.yaml"
PARADIGMS = ["real", "coreset@forgetting", "distill@mtt", "distill@datm", "diffusion@img2img", "dfkd", "dpsgd"]


def write_fake_cifar10(root: Path, per_batch: int = 40, n_test: int = 50, seed: int = 0) -> None:
    """cifar-10-batches-py/ in the real pickle format: five train batches, a test batch, the meta file.

    Each class is a colour template plus noise, so a small model can learn it.
    """
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (10, 3, 1, 1))
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int, name: str) -> dict:
        labels = rng.integers(0, 10, n)
        images = np.clip(templates[labels] + rng.normal(0, 40, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
        return {"batch_label": name, "labels": labels.tolist(), "data": images.reshape(n, 3072), "filenames": []}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch, f"training batch {i} of 5"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, "testing batch 1 of 1"), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)


def test_the_config_loads_with_the_studys_setup():
    config = load_config(CONFIG)
    assert config.dataset.name == "cifar10" and config.n_models == 64 and config.model.arch == "resnet18"
    assert config.audit.n_audit == 500 and config.audit.canary == "mislabel"
    assert config.paradigms == PARADIGMS and config.queries == expand_queries(["flip-shift-18"], 4)  # the study's 18
    mtt = make_paradigm(config, "distill@mtt").options
    assert (mtt.method, mtt.n_experts, mtt.expert_train_epochs, mtt.syn_steps, mtt.iterations) == ("mtt", 100, 50, 30, 5000)
    datm = make_paradigm(config, "distill@datm").options
    assert (datm.method, datm.syn_steps, datm.initial_max_start_epoch, datm.iterations) == ("datm", 80, 9, 10000)
    assert (datm.expansion_iterations, datm.experts, datm.loss_threshold, datm.eval_recipe) == (1000, "ftd", 1.0, "published")
    assert make_paradigm(config, "dfkd").options.teacher_arch == "wrn16_4"
    img2img = make_paradigm(config, "diffusion@img2img").options
    assert (img2img.pipeline, img2img.generation, img2img.strength) == ("stable-diffusion", "img2img", 0.5)


# Every paradigm cut to a few seconds on 2 cores; the diffusion variant uses the small UNet (no
# Stable Diffusion folder here) and keeps img2img.
CHEAP = {
    "coreset@forgetting": {"method": "forgetting", "ipc": 2, "feature_epochs": 1, "train_epochs": 3},
    "distill@mtt": {"method": "mtt", "ipc": 1, "embed_width": 8, "n_experts": 1, "expert_train_epochs": 2,
                    "expert_epochs": 1, "max_start_epoch": 1, "syn_steps": 2, "iterations": 2, "train_epochs": 3},
    "distill@datm": {"method": "datm", "ipc": 1, "embed_width": 8, "n_experts": 1, "expert_train_epochs": 2,
                     "expert_epochs": 1, "max_start_epoch": 1, "syn_steps": 2, "iterations": 2, "train_epochs": 3},
    "diffusion@img2img": {"generation": "img2img", "strength": 0.5, "block_out_channels": [8, 16],
                          "norm_num_groups": 4, "train_steps": 2, "batch_size": 32, "sample_steps": 2},
    "dfkd": {"method": "deepinversion", "teacher_arch": "mlp", "teacher_width": 16, "teacher_epochs": 1,
             "n_synthetic": 20, "batch_size": 10, "iterations": 2},
    "dpsgd": {"epsilon": 8.0, "epochs": 1, "batch_size": 64},
}


@pytest.mark.slow  # 18 models trained end to end, every paradigm of the config
def test_a_shortened_copy_runs_end_to_end(tmp_path, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.cifar

    from raypriv.driver import run_audit

    write_fake_cifar10(tmp_path / "data")
    # The fake files cannot have CIFAR-10's md5 sums; everything after the check is the real loader.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    overrides = {
        "out_dir": str(tmp_path / "run"),
        "n_models": 2,  # the loss attack only (LiRA would need 8 models: four times the time)
        "dataset.root": str(tmp_path / "data"),
        "audit.n_audit": 40,
        "model.arch": "cnn_small",
        "model.width": 8,
        "train.epochs": 2,
        "train.batch_size": 128,
        "train.engine": "loop",
        "attacks": ["loss"],
        # Two of the 18 queries (one flip, one shift): each query is one more pass over the audit set per model,
        # and the 18-query protocol itself is checked query by query in tests/test_queries.py.
        "queries": ["identity", "hflip"],
        **{f"paradigm_options.{name}": options for name, options in CHEAP.items()},
    }
    assert len(load_config(CONFIG).queries) == 18  # the study's protocol, as the config states it
    config = load_config(CONFIG, overrides)
    assert config.paradigms == PARADIGMS
    result = run_audit(config, use_ray=False, show_progress=False)
    models = result.models
    assert sorted(models.paradigm.unique()) == sorted(PARADIGMS)
    assert len(models) == 2 * len(PARADIGMS)
    assert models.test_acc.between(0.0, 1.0).all()
    assert models[models.paradigm == "real"].test_acc.mean() > 0.15  # above chance (0.1) after 2 epochs
    assert (models[models.paradigm == "distill@datm"].synthetic_size == 10).all()
    assert (models[models.paradigm == "diffusion@img2img"].synthetic_size > 150).all()  # one per private image
