"""Every registered model maps [B, C, H, W] images in [0, 1] to [B, K] logits, and BatchNorm
behaves correctly in train vs eval mode."""
import pytest
import torch

from advlab.core import models

SMALL = {"wide_resnet": {"depth": 10, "widen": 1}, "preact_resnet18": {"width": 8}}


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_logits_shape(name, channels, size):
    kw = dict(SMALL.get(name, {}))
    if name in ("small_cnn", "mlp", "lenet"):
        kw["image_size"] = size
    m = models.create_model(name, num_classes=7, in_channels=channels, **kw).eval()
    assert m(torch.rand(3, channels, size, size)).shape == (3, 7)


def test_batchnorm_train_vs_eval():
    torch.manual_seed(0)
    m = models.create_model("vgg_mini_bn")
    assert models.has_batchnorm(m)
    x = torch.rand(16, 1, 28, 28)
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    m.eval()
    before = bn.running_mean.clone()
    out1, out2 = m(x), m(x[:4])
    assert torch.equal(bn.running_mean, before)          # eval: statistics frozen
    assert torch.allclose(out1[:4], out2, atol=1e-5)      # eval: batch-independent outputs
    m.train()
    m(x)
    assert not torch.equal(bn.running_mean, before)      # train: statistics updated


def test_normalize_lives_inside_the_model():
    m = models.create_model("preact_resnet18", in_channels=3, width=8,
                            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(m.norm(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))


def test_unknown_model_lists_the_allowed_ones():
    with pytest.raises(KeyError, match="small_cnn"):
        models.create_model("resnet9000")
