"""The paper's learned 3D ensemble: two 3x3x3 convolutions fusing the three planes.

Input ``(N, P * (K + 1), D, H, W)``, plane-major as :func:`lumbarseg.planes.fusion_input` builds
it: per plane its K class probabilities, then its position channel (relative position along
the plane's normal, 0 where the plane has no data). Output: K-class logits. The paper's binary
disc model is K = 1, P = 3: 6 channels in.

Initialisation: hidden channel k starts as the mean over planes of class k's probability and
output k as a scaled copy of it, so the untrained fusion already predicts the planes' average
(a usable ensemble) and training starts from there; the other hidden channels start small and
learn where to trust which plane.
"""

from __future__ import annotations

import torch
from torch import nn


class FusionNet(nn.Module):
    def __init__(self, *, num_classes: int, planes: int = 3, hidden: int | None = None):
        super().__init__()
        self.num_classes, self.planes = num_classes, planes
        hidden = hidden or 2 * num_classes
        if hidden < num_classes:
            raise ValueError(f"hidden width {hidden} must be at least num_classes {num_classes}")
        self.conv1 = nn.Conv3d(planes * (num_classes + 1), hidden, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(hidden, num_classes, 3, padding=1)
        self._init_as_average()

    @torch.no_grad()
    def _init_as_average(self) -> None:
        k, p = self.num_classes, self.planes
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=1e-4)
            nn.init.zeros_(conv.bias)
        for c in range(k):
            for plane in range(p):
                self.conv1.weight[c, plane * (k + 1) + c, 1, 1, 1] = 1.0 / p
            self.conv2.weight[c, c, 1, 1, 1] = 10.0  # softmax of 10x the mean probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def fusion_net(*, num_classes: int = 9, planes: int = 3, hidden: int | None = None) -> FusionNet:
    return FusionNet(num_classes=num_classes, planes=planes, hidden=hidden)
