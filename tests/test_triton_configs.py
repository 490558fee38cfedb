"""The committed Triton model repository: every config parses, the GPU (production) and CPU
variants of each model agree on what they accept and return, and the export's config check
refuses a graph that does not fit. Fast; no server, no export."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2

from lumbarseg import planes, tissues
from lumbarseg.triton.export import (CPU_CONFIG, FUSION_IN_PIPELINE, MODELS, NETWORK_MODELS, PIPELINE, TEMPLATE,
                                     ExportError, check_config, read_config)

K = tissues.NUM_TISSUES


def tensors(config) -> list[tuple[str, str, list[int]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in (*config.input, *config.output)]


@pytest.mark.parametrize("model", MODELS)
def test_gpu_and_cpu_configs_parse_and_agree(model):
    gpu = read_config(TEMPLATE / model / "config.pbtxt")
    cpu = read_config(TEMPLATE / model / CPU_CONFIG)
    assert gpu.name == cpu.name == model
    assert tensors(gpu) == tensors(cpu)
    assert gpu.max_batch_size == cpu.max_batch_size
    assert cpu.backend == "python" and (TEMPLATE / model / "1" / "model.py").is_file()
    assert all(g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in cpu.instance_group)
    if model in NETWORK_MODELS:
        assert gpu.platform == "onnxruntime_onnx"
        assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
        assert gpu.max_batch_size > 1
        preferred = list(gpu.dynamic_batching.preferred_batch_size)
        assert preferred and max(preferred) <= gpu.max_batch_size
        assert list(cpu.dynamic_batching.preferred_batch_size) == preferred
        assert [name for name, _, _ in tensors(gpu)][-1] == "PROBABILITIES"
        assert tensors(gpu)[-1][2][0] == K
    else:  # the BLS pipeline: one study per request, on the same grid in and out
        assert gpu.backend == "python" and gpu.max_batch_size == 0
        assert tensors(gpu)[0] == ("IMAGE", "TYPE_FP32", [3, -1, -1, -1])
        assert gpu.parameters["tissues"].string_value == ",".join(tissues.TISSUE_NAMES)
        assert float(gpu.parameters["spacing_mm"].string_value) > 0
        # on CPU the pipeline runs the fusion's file itself; on the GPU it calls the fusion model
        assert cpu.parameters[FUSION_IN_PIPELINE].string_value == "true"
        assert FUSION_IN_PIPELINE not in gpu.parameters


def test_pipeline_outputs_name_every_plane():
    config = read_config(TEMPLATE / PIPELINE / "config.pbtxt")
    names = {t.name for t in config.output}
    assert names == {"PROBABILITIES", "CLASSES", "SOURCE_CLASSES", "REGION",
                     *(f"{plane.upper()}_{kind}" for plane in planes.PLANES for kind in ("PROBABILITIES", "CLASSES"))}


def test_a_config_that_does_not_fit_the_graph_is_refused():
    config = read_config(TEMPLATE / "plane_axial" / "config.pbtxt")
    graph = {"IMAGE": ("TYPE_FP32", [None, 3, None, None]), "PROBABILITIES": ("TYPE_FP32", [None, K, None, None])}
    check_config(config, graph, "plane_axial")
    with pytest.raises(ExportError, match=r"PROBABILITIES is TYPE_FP32 \[9, -1, -1\] in the config but TYPE_FP32 \[4"):
        check_config(config, {**graph, "PROBABILITIES": ("TYPE_FP32", [None, 4, None, None])}, "plane_axial")
    with pytest.raises(ExportError, match="config names"):
        check_config(config, {"INPUT": graph["IMAGE"], "PROBABILITIES": graph["PROBABILITIES"]}, "plane_axial")


def test_an_unparsable_config_names_the_file(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_size: lots\n')
    with pytest.raises(ExportError, match="config.pbtxt"):
        read_config(path)
