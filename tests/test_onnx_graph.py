"""The first-token pass on small hand-built graphs, run in onnxruntime before and after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from classifier.onnx_graph import keep_first_token_after_last_attention

HIDDEN = 8


def encoder_layer_graph(path: Path, pooling: str) -> Path:
    """Attention, output projection + residual + layer norm, then ``pooling`` over tokens."""
    rng = np.random.default_rng(0)
    weights = {
        "qkv_w": rng.normal(size=(HIDDEN, 3 * HIDDEN)), "qkv_b": rng.normal(size=3 * HIDDEN),
        "out_w": rng.normal(size=(HIDDEN, HIDDEN)), "ln_g": np.ones(HIDDEN), "ln_b": np.zeros(HIDDEN),
    }
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    initializers.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"))
    nodes = [
        helper.make_node("Attention", ["x", "qkv_w", "qkv_b"], ["attended"], domain="com.microsoft", num_heads=2),
        helper.make_node("MatMul", ["attended", "out_w"], ["projected"]),
        helper.make_node("Add", ["projected", "x"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "ln_g", "ln_b"], ["hidden"], axis=-1),
    ]
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", HIDDEN])]
    if pooling == "mean":
        nodes.append(helper.make_node("ReduceMean", ["hidden"], ["pooled"], axes=[1], keepdims=0))
    else:
        nodes.append(helper.make_node("Gather", ["hidden", "zero"], ["first"], axis=1))
    if pooling == "first":
        nodes.append(helper.make_node("Identity", ["first"], ["pooled"]))
    elif pooling == "first+mean":  # a head that also reads every token of the tail
        nodes.append(helper.make_node("ReduceMean", ["hidden"], ["mean"], axes=[1], keepdims=0))
        nodes.append(helper.make_node("Add", ["first", "mean"], ["pooled"]))
    elif pooling == "first, hidden states out":  # the tail itself is a graph output
        nodes.append(helper.make_node("Identity", ["first"], ["pooled"]))
        outputs.append(helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "tokens", HIDDEN]))
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", HIDDEN])],
        outputs, initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["pooled"], {"x": x})[0]


def test_first_token_pooling_gets_the_same_output_from_one_token(tmp_path: Path) -> None:
    path = encoder_layer_graph(tmp_path / "model.onnx", pooling="first")
    x = np.random.default_rng(1).normal(size=(3, 7, HIDDEN)).astype(np.float32)
    before = run(path, x)

    assert keep_first_token_after_last_attention(path)

    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node].count("Slice") == 2
    np.testing.assert_allclose(run(path, x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "first+mean", "first, hidden states out"])
def test_graphs_that_read_more_than_the_first_token_are_left_alone(tmp_path: Path, pooling: str) -> None:
    path = encoder_layer_graph(tmp_path / "model.onnx", pooling=pooling)
    original = path.read_bytes()

    assert not keep_first_token_after_last_attention(path)
    assert path.read_bytes() == original
    run(path, np.ones((1, 3, HIDDEN), dtype=np.float32))  # and it still runs
