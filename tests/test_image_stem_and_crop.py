"""The recipe options for learning objects: a convolutional stem and random resized crops."""

import pytest
import torch

from mmtlab.config import ConfigError, load_config
from mmtlab.data.augment import cropping, random_resized_crop
from mmtlab.models.vision import PatchEmbedding


@pytest.mark.parametrize("patch", [8, 16])
def test_conv_stem_gives_the_linear_patchify_shapes(patch):
    x = torch.randn(3, 3, 64, 64)
    lin = PatchEmbedding(64, patch, 32, stem="linear")
    conv = PatchEmbedding(64, patch, 32, stem="conv")
    assert lin(x).shape == conv(x).shape == (3, 1 + (64 // patch) ** 2, 32)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in conv.proj) == patch.bit_length() - 1


def test_conv_stem_config():
    cfg = load_config({"model": {"base": "dual-tiny", "image": {"stem": "conv"}}})
    assert cfg.model.image.stem == "conv"
    with pytest.raises(ConfigError, match="power-of-two"):
        load_config({"model": {"image": {"stem": "conv", "size": 60, "patch": 12}}})
    with pytest.raises(ConfigError, match="stem"):
        load_config({"model": {"image": {"stem": "convolutional"}}})


def test_random_resized_crop():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    same = random_resized_crop(x, (1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)  # the whole image: nothing changes
    y = random_resized_crop(x, (0.3, 0.6), generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(y, x)
    assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
    # A crop of a left-right ramp is still a left-right ramp (no flip).
    ramp = torch.linspace(-1, 1, 16).expand(1, 3, 16, 16).contiguous()
    z = random_resized_crop(ramp, (0.3, 0.6), generator=torch.Generator().manual_seed(1))
    assert (z[0, 0, :, 1:] >= z[0, 0, :, :-1] - 1e-6).all()
    a, b = cropping(torch.stack, (0.5, 1.0), 3), cropping(torch.stack, (0.5, 1.0), 3)
    items = list(x)
    assert torch.equal(a(items), b(items))  # seeded


def test_crop_scale_config():
    assert load_config({"data": {"crop_scale": [0.6, 1.0]}}).data.crop_scale == (0.6, 1.0)
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config({"data": {"crop_scale": [0.0, 1.0]}})


def test_grouped_sampler_makes_runs_of_one_background():
    from mmtlab.data.grouped import GroupedSampler

    keys = ["red"] * 37 + ["blue"] * 50 + ["green"] * 13
    s = GroupedSampler(keys, 8, seed=0)
    perm = s.permutation(0)
    assert sorted(perm.tolist()) == list(range(100))  # a permutation
    full = (37 // 8 + 50 // 8 + 13 // 8) * 8
    runs = perm[:full].view(-1, 8).tolist()
    assert all(len({keys[i] for i in run}) == 1 for run in runs)
    assert not torch.equal(perm, s.permutation(1)) and torch.equal(perm, GroupedSampler(keys, 8, 0).permutation(0))
    # Resume: a sampler started at sample 40 continues the same stream.
    it, resumed = iter(s), iter(GroupedSampler(keys, 8, 0, start=40))
    stream = [next(it) for _ in range(140)]
    assert [next(resumed) for _ in range(100)] == stream[40:]
