"""Plane network and fusion: shapes, presets, local weights, the fusion's starting point, learning."""

from __future__ import annotations

import pytest
import torch

from lumbarseg.networks.fusion import fusion_net
from lumbarseg.networks.plane_net import load_preset, plane_net


@pytest.mark.parametrize("size", [(128, 128), (37, 53), (8, 200)])
def test_lite_gives_full_resolution_logits_for_any_size(size):
    model = plane_net(preset="lite", num_classes=9).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 9, *size)


def test_paper_preset_runs_a_512_slice_at_stride_8():
    model = plane_net(preset="paper", num_classes=9).eval()
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        assert model.encoder_features(x).shape == (1, 1024, 64, 64)  # the paper's 64x64x1024
        assert model(x).shape == (1, 9, 512, 512)


def test_presets_are_validated():
    with pytest.raises(ValueError, match="unknown model preset"):
        load_preset("enormous")
    with pytest.raises(ValueError, match="keys must be"):
        load_preset({"block": "basic"})


def test_local_encoder_weights_load_and_a_wrong_file_is_named(tmp_path):
    source = plane_net(preset="lite")
    path = tmp_path / "encoder.pt"
    torch.save(source.encoder.state_dict(), path)
    model = plane_net(preset="lite", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), source.encoder.state_dict().values()))
    torch.save(plane_net(preset="paper").encoder.state_dict(), tmp_path / "resnet50.pt")
    with pytest.raises(ValueError, match="resnet50.pt: does not fit"):
        plane_net(preset="lite", weights=tmp_path / "resnet50.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable"):
        plane_net(preset="lite", weights=tmp_path / "junk.pt")


@pytest.mark.parametrize("k, channels", [(1, 6), (9, 30)])
def test_fusion_channels_and_untrained_average(k, channels):
    model = fusion_net(num_classes=k).eval()
    assert model.conv1.in_channels == channels and model.conv2.out_channels == k
    if k == 1:
        return
    probs = (torch.randn(1, k, 10, 10, 10) * 4).softmax(dim=1)
    x = torch.cat([torch.cat([probs, torch.full((1, 1, 10, 10, 10), 0.5)], dim=1)] * 3, dim=1)
    with torch.no_grad():
        agree = (model(x).argmax(1) == probs.argmax(1)).float().mean()
    assert agree > 0.99


def test_plane_net_learns_a_bright_square():
    torch.manual_seed(0)
    model = plane_net(preset="lite", num_classes=2)
    x = torch.zeros(4, 3, 32, 32)
    x[:, :, 8:20, 10:24] = 1
    y = (x[:, 0] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.97
