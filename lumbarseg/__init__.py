"""lumbarseg: lumbar spine MRI segmentation with an ensemble of 2D plane networks."""

__version__ = "0.1.0"
