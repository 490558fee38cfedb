"""lumbarseg: lumbar spine MRI segmentation with an ensemble of 2D plane networks."""

import warnings

__version__ = "0.1.0"

# MONAI imports every network at start-up, and one (DiNTS) uses torch.jit.interface, which torch
# 2.14 deprecates: a FutureWarning on every command that says nothing about this project.
# PYTHONWARNINGS form of the same filter, for processes that import MONAI before lumbarseg
# (monailabel start_server).
QUIET_WARNINGS = "ignore:`torch.jit.interface` is deprecated:FutureWarning"
warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)
