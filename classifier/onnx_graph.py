"""A graph pass of our own on the fused ONNX model, for what Optimum's fusions leave undone.

A BERT-style classifier reads one token of the last layer: the pooler takes the first
token (``[CLS]``) and throws the others away. Attention is the only step that mixes tokens,
so after the last attention everything (output projection, feed-forward, layer norms) may
run on that one token instead of all of them, and the fp32 logits stay the same (dynamic
int8 shifts slightly: the last layer's activation ranges then come from that token). The pass
applies only when the graph has exactly that shape; otherwise it leaves the model alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Operators that compute each token from that token alone (with constant weights): safe to run on one.
PER_TOKEN_OPS = frozenset({"MatMul", "Add", "LayerNormalization", "BiasGelu", "Gelu", "FastGelu"})


def keep_first_token_after_last_attention(model_path: Path) -> bool:
    """Rewrite the model in place so its last layer computes only the first token past attention.

    Returns whether the model had the expected shape (last ``Attention``, then per-token
    operators only, then a ``Gather`` of index 0 on the token axis) and was rewritten.
    """
    import onnx

    model = onnx.load(str(model_path))
    if not _rewrite(model.graph):
        return False
    onnx.save(model, str(model_path))
    return True


def _rewrite(graph: Any) -> bool:  # graph: an onnx.GraphProto
    from onnx import helper, numpy_helper

    nodes = list(graph.node)
    attention_at = [i for i, node in enumerate(nodes) if node.op_type == "Attention"]
    if not attention_at:
        return False
    last = attention_at[-1]
    attention = nodes[last]
    # The layer's input (the residual) and the attention output: the tail may read only these,
    # its own results and constants, so slicing these two to the first token slices all of it.
    sources = (attention.input[0], attention.output[0])
    tail = _per_token_tail(graph, nodes[last + 1:], sources)
    if tail is None:
        return False
    first_token = {name: f"{name}_first_token" for name in sources}
    bounds = {"starts": 0, "ends": 1, "axes": 1}
    taken = {name for node in nodes for name in [*node.input, *node.output]}
    taken |= {initializer.name for initializer in graph.initializer}
    if taken & {*first_token.values(), *(f"first_token_{key}" for key in bounds)}:
        return False  # our names are in use already (the pass ran before?): leave the graph alone
    graph.initializer.extend(numpy_helper.from_array(np.array([value], dtype=np.int64), f"first_token_{key}")
                             for key, value in bounds.items())
    slices = [helper.make_node("Slice", [name, *(f"first_token_{key}" for key in bounds)], [sliced],
                               name=f"FirstToken_{index}")
              for index, (name, sliced) in enumerate(first_token.items())]
    for node in tail:
        for index, name in enumerate(node.input):
            if name in first_token:
                node.input[index] = first_token[name]
    # Shapes recorded for the tail still say "every token"; drop them rather than leave them wrong.
    reshaped = {output for node in tail for output in node.output}
    kept = [info for info in graph.value_info if info.name not in reshaped]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes[:last + 1] + slices + nodes[last + 1:])
    return True


def _per_token_tail(graph: Any, after_attention: list[Any], sources: tuple[str, ...]) -> list[Any] | None:
    """The nodes between the last attention and a first-token Gather, if each is per-token, reads
    nothing but ``sources``, earlier tail results and constants, and its results are read by
    nothing but the tail and that Gather (no graph output, no other head)."""
    constants = {initializer.name for initializer in graph.initializer}
    constants |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    constants -= {value.name for value in graph.input}  # an initializer listed as an input can be overridden
    readable = set(sources)
    tail: list[Any] = []
    for node in after_attention:
        if node.op_type == "Gather":
            if not (tail and node.input[0] in readable and _picks_first_token(graph, node)):
                return None
            return tail if _read_only_by(graph, tail, [*tail, node]) else None
        if not _is_per_token(node, readable, constants):
            return None
        tail.append(node)
        readable.update(node.output)
    return None


def _is_per_token(node: Any, readable: set[str], constants: set[str]) -> bool:
    if node.op_type not in PER_TOKEN_OPS or node.domain not in ("", "ai.onnx", "com.microsoft"):
        return False
    if not set(node.input) <= readable | constants | {""}:
        return False
    if node.op_type == "MatMul":
        return node.input[1] in constants  # a product of two activations (attention scores) mixes tokens
    if node.op_type == "LayerNormalization":  # normalising over the token axis would mix tokens
        return next((a.i for a in node.attribute if a.name == "axis"), -1) in (-1, 2)
    return True


def _read_only_by(graph: Any, producers: list[Any], readers: list[Any]) -> bool:
    """Whether the outputs of ``producers`` are neither graph outputs nor read outside ``readers``."""
    produced = {output for node in producers for output in node.output}
    if produced & {value.name for value in graph.output}:
        return False
    allowed = {tuple(node.output) for node in readers}  # each tensor has one producer: outputs name a node
    return all(tuple(node.output) in allowed for node in graph.node if produced & set(node.input))


def _picks_first_token(graph: Any, gather: Any) -> bool:
    axis = next((attribute.i for attribute in gather.attribute if attribute.name == "axis"), 0)
    index = _constant(graph, gather.input[1])
    return axis == 1 and index is not None and index.ndim == 0 and int(index) == 0


def _constant(graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for initializer in graph.initializer:
        if initializer.name == name:
            return numpy_helper.to_array(initializer)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def add_features_output(model_path: Path, output_name: str) -> bool:
    """Make the first token's last-layer state, which the classification head reads, an output of the model
    named ``output_name`` (for the out-of-scope detector: ``classifier.oos``), in place.

    Returns whether the graph has that token's ``Gather`` (BERT's pooler, RoBERTa's head) and got the output.
    Run it on the plain export, before the fusions and :func:`keep_first_token_after_last_attention`: graph
    outputs survive both.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    if output_name in {value.name for value in graph.output}:
        return True
    gathers = [node for node in graph.node if node.op_type == "Gather" and _picks_first_token(graph, node)]
    if not gathers:
        return False
    # The last first-token Gather is the head's: earlier ones (if any) would read earlier layers.
    graph.node.append(helper.make_node("Identity", [gathers[-1].output[0]], [output_name], name="Features"))
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch_size", "hidden"]))
    onnx.save(model, str(model_path))
    return True


def add_field_heads(model_path: Path, features_output: str, heads: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Add each field's head (classifier.heads) to the model, in place: ``name = features @ weight.T + bias``,
    an output of the graph beside the logits, so that one run yields every field. ``features_output`` is the
    first-token state :func:`add_features_output` made an output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    outputs = {value.name for value in graph.output}
    if features_output not in outputs:
        raise ValueError(f"the model has no {features_output!r} output for the field heads to read")
    for name, weight, bias in heads:
        if name in outputs:
            continue
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32),
                                                          f"{name}_weight"),
                                  numpy_helper.from_array(bias.astype(np.float32), f"{name}_bias")])
        graph.node.extend([helper.make_node("MatMul", [features_output, f"{name}_weight"], [f"{name}_product"],
                                            name=f"{name}_MatMul"),
                           helper.make_node("Add", [f"{name}_product", f"{name}_bias"], [name], name=f"{name}_Add")])
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", len(bias)]))
    onnx.save(model, str(model_path))
