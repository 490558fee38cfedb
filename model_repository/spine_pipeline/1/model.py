"""spine_pipeline: study volume -> three plane models -> fusion (BLS); see lumbarseg.triton.python_models."""
from lumbarseg.triton.python_models import SpinePipeline as TritonPythonModel  # noqa: F401
