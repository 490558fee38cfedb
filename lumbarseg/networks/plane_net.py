"""The paper's 2D plane network: a fully convolutional ResNet at output stride 8 with a
UNet-like decoder back to full resolution.

Encoder: torchvision's ResNet blocks (``BasicBlock`` or ``Bottleneck``) in the torchvision
layout (``conv1``, ``bn1``, ``layer1`` ...), so a torchvision ResNet state dict loads into it.
The first two stages reach stride 8 (stem /4, ``layer2`` /2); later stages keep stride 8 and
dilate instead, as torchvision's FCN/DeepLab backbones do (``replace_stride_with_dilation``).
With the ``paper`` preset (ResNet-50 up to ``layer3``) a 512x512 slice gives the paper's
64x64x1024 feature map.

Decoder: three up-convolutions double the resolution from stride 8 to 1, each joined with the
encoder features of that resolution (``layer1`` at /4, the stem at /2, a small full-resolution
convolution at /1), so coarse context and fine detail meet, as in the paper's Fig. 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "models"
PRESET_KEYS = {"block", "layers", "widths", "stem_width", "decoder_widths", "dropout", "input_size"}
BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STRIDE = 8


def load_preset(preset: str | Path | dict) -> dict:
    """A model preset: a dict, a JSON path, or a name in ``configs/models``."""
    if isinstance(preset, dict):
        data = dict(preset)
    else:
        path = Path(preset)
        if not path.is_file():
            path = PRESETS / f"{preset}.json"
        if not path.is_file():
            known = sorted(p.stem for p in PRESETS.glob("*.json"))
            raise ValueError(f"unknown model preset {preset!r}; known: {known}")
        data = json.loads(path.read_text())
    data.pop("about", None)
    if set(data) != PRESET_KEYS:
        raise ValueError(f"model preset keys must be {sorted(PRESET_KEYS)}, got {sorted(data)}")
    if data["block"] not in BLOCKS or len(data["layers"]) != len(data["widths"]) or len(data["layers"]) < 2:
        raise ValueError(f"bad model preset {data}")
    return data


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _dilate(block: nn.Module, dilation: int) -> None:
    """Dilate a block's 3x3 convolutions (torchvision's BasicBlock refuses a dilation argument)."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            m.dilation, m.padding = (dilation, dilation), (dilation, dilation)


class ResNetEncoder(nn.Module):
    """ResNet stem and stages; :meth:`forward` returns features at strides 2, 4 and 8."""

    def __init__(self, *, block: str, layers: list[int], widths: list[int], stem_width: int, in_channels: int):
        super().__init__()
        block_cls = BLOCKS[block]
        self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem_width
        for i, (count, width) in enumerate(zip(layers, widths)):
            stride = 2 if i == 1 else 1  # stem /4, layer2 /8, later stages dilate
            dilation = 2 ** (i - 1) if i >= 2 else 1
            out = width * block_cls.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
            blocks = [block_cls(inplanes, width, stride, downsample)]
            blocks += [block_cls(out, width) for _ in range(count - 1)]
            for b in blocks:
                _dilate(b, dilation)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out
        self.stages = len(layers)
        self.channels = (stem_width, widths[0] * block_cls.expansion, inplanes)  # strides 2, 4, 8

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s2 = self.relu(self.bn1(self.conv1(x)))
        s4 = self.layer1(self.maxpool(s2))
        s8 = s4
        for i in range(2, self.stages + 1):
            s8 = getattr(self, f"layer{i}")(s8)
        return s2, s4, s8


class UpBlock(nn.Module):
    """Double the resolution, join the encoder's features of that resolution, refine."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.refine = nn.Sequential(_conv_bn_relu(cout + skip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.refine(torch.cat([self.up(x), skip], dim=1))


class PlaneNet(nn.Module):
    """``(N, C, H, W)`` slices -> ``(N, num_classes, H, W)`` logits, for any H and W."""

    def __init__(self, preset: dict, *, num_classes: int, in_channels: int):
        super().__init__()
        self.preset = preset
        self.encoder = ResNetEncoder(block=preset["block"], layers=preset["layers"], widths=preset["widths"],
                                     stem_width=preset["stem_width"], in_channels=in_channels)
        d4, d2, d1 = preset["decoder_widths"]
        s2, s4, s8 = self.encoder.channels
        self.full_resolution = _conv_bn_relu(in_channels, d1)
        self.dropout = nn.Dropout2d(preset["dropout"])
        self.up4 = UpBlock(s8, s4, d4)
        self.up2 = UpBlock(d4, s2, d2)
        self.up1 = UpBlock(d2, d1, d1)
        self.head = nn.Conv2d(d1, num_classes, 1)

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-8 feature map (input sizes divisible by 8)."""
        return self.encoder(x)[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Pad to a multiple of the stride so every skip joins at matching size; crop back after.
        x = F.pad(x, (0, -w % STRIDE, 0, -h % STRIDE))
        s2, s4, s8 = self.encoder(x)
        y = self.up4(self.dropout(s8), s4)
        y = self.up2(y, s2)
        y = self.up1(y, self.full_resolution(x))
        return self.head(self.dropout(y))[..., :h, :w]


def load_encoder_weights(model: PlaneNet, path: str | Path) -> None:
    """Load a local ResNet state dict (e.g. torchvision's resnet50 ImageNet weights, fetched by
    the user) into the encoder: every encoder tensor must be present with the same shape."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable state dict ({err})") from err
    state = state.get("state_dict", state)
    own = model.encoder.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"{path}: does not fit the {model.preset['block']} encoder: "
                         f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(wrong)} of wrong shape (e.g. {wrong[:2]})")
    model.encoder.load_state_dict({k: state[k] for k in own})


def plane_net(*, preset: str | Path | dict = "lite", num_classes: int = 9, in_channels: int = 3,
              weights: str | Path | None = None) -> PlaneNet:
    """Build a plane network from a preset; ``weights``: an optional local encoder state dict
    (random initialisation otherwise; nothing is ever downloaded)."""
    model = PlaneNet(load_preset(preset), num_classes=num_classes, in_channels=in_channels)
    if weights is not None:
        load_encoder_weights(model, weights)
    return model
