import numpy as np
import pytest
import torch

from raypriv.config import DatasetConfig, ModelConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.models import build_model
from raypriv.pipeline import ShadowTrainer
from raypriv.run.format import logits_path
from raypriv.run.store import RunStore
from raypriv.split import make_audit_split
from raypriv.training import Normalizer, random_crop, random_flip
from tests.conftest import tiny_config_dict


@pytest.mark.parametrize("arch", ["mlp", "cnn_small", "resnet18", "wrn16_4"])
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_architectures_train_a_step(arch, norm):
    shape = (3, 32, 32) if arch in ("resnet18", "wrn16_4") else (1, 8, 8)
    model = build_model(ModelConfig(arch=arch, norm=norm, width=8 if arch != "mlp" else 32), shape, 10)
    x = torch.randn(4, *shape)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(4))
    loss.backward()
    assert model(x).shape == (4, 10)
    if norm == "group":
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_augmentations_are_seeded_and_shape_preserving():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    a = random_crop(x, 1, torch.Generator().manual_seed(0))
    b = random_crop(x, 1, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    torch.testing.assert_close(random_crop(x, 0, torch.Generator()), x)
    flipped = random_flip(x, torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_normalizer_standardises_images():
    x = np.random.default_rng(0).integers(0, 256, (100, 3, 4, 4), dtype=np.uint8)
    out = Normalizer.fit(x)(torch.from_numpy(x))
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_a_model_is_reproducible_from_seed_and_model_id(tmp_path):
    config = config_from_dict(tiny_config_dict(tmp_path))
    data = load_dataset(DatasetConfig())
    split = make_audit_split(data, 40, "mislabel", 8, config.seed)

    def logits_of(model_id, folder):
        trainer = ShadowTrainer(config.to_dict(), str(tmp_path / folder), data, split)
        trainer.run("real", model_id)
        table = RunStore(str(tmp_path / folder)).read_table(logits_path("real", model_id))
        return np.stack(table.column("logits").to_numpy(zero_copy_only=False))

    first = logits_of(3, "a")
    np.testing.assert_array_equal(first, logits_of(3, "b"))  # a fresh worker gives the same model
    assert not np.allclose(first, logits_of(2, "c"))  # another id is another model
