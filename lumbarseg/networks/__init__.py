"""Plane networks (ResNet FCN, stride 8, UNet-like decoder) and the learned 3D fusion."""
