"""NVIDIA Triton: ``export`` (weights -> ONNX in the model repository, checked), ``server`` (a
local tritonserver on loopback), ``client`` (segmentation over HTTP/gRPC, a drop-in for the
in-process Segmenter), ``python_models`` (the repository's python-backend models) and
``commands`` (the ``export``, ``triton`` and ``infer`` subcommands)."""
