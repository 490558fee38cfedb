"""plane_sagittal on onnxruntime for the python backend (configs/cpu.pbtxt); see lumbarseg.triton.python_models."""
from lumbarseg.triton.python_models import OnnxModel as TritonPythonModel  # noqa: F401
