"""Optimising the inference graph once, when it is exported, instead of in every task.

TensorFlow runs its graph optimiser (grappler: function inlining, constant folding, Conv+BatchNorm+ReLU
fusion, the bfloat16 rewrite) the first time a function is called in a process: about 1 s of every task
for Mask R-CNN. Here it runs at export time on the traced function, weights staying variables; the result
is imported into a function that reads the weights from a few packed variables (restoring 690 variables
one by one took ~0.8 s of every load), and that function is what the SavedModel holds. A task then loads it
with the optimiser turned off (`disable_runtime_optimizer`).

TensorFlow only; never imports mrcnn or tf_keras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.errors import ModelError


def _grappler_config(precision: str) -> Any:
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    if precision == "bf16":
        rewrite.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    return config


#: the packed weights are rows of this many values (64 bytes of float32): a weight whose size is a multiple
#: of it is a zero-copy slice of the packed variable
_ROW = 16
_BFLOAT16 = 14  # types_pb2.DT_BFLOAT16


def _pack(variables: Sequence[Any]) -> tuple[list[Any], list[tuple[int, int, int, tuple[int, ...]]]]:
    """One (rows, 16) variable per dtype holding every weight, and where each weight lies in it:
    (packed index, first row, size, shape)."""
    import numpy as np
    import tensorflow as tf

    groups: dict[Any, list[Any]] = {}
    places: list[tuple[int, int, int, tuple[int, ...]]] = []
    rows: dict[Any, int] = {}
    order: list[Any] = []
    for var in variables:
        dtype = var.dtype
        if dtype not in groups:
            groups[dtype], rows[dtype] = [], 0
            order.append(dtype)
        value = var.numpy().reshape(-1)
        padded = -(-value.size // _ROW) * _ROW
        groups[dtype].append(np.pad(value, (0, padded - value.size)))
        places.append((order.index(dtype), rows[dtype], value.size, tuple(var.shape)))
        rows[dtype] += padded // _ROW
    packed = [
        tf.Variable(np.concatenate(groups[d]).reshape(-1, _ROW), trainable=False, name=f"packed_{i}")
        for i, d in enumerate(order)
    ]
    return packed, places


def _detach_reads(graph_def: Any, resources: Mapping[str, int]) -> dict[str, int] | None:
    """Turn every read of a captured variable into a Placeholder (fed with its slice of the packed weights)
    and drop the variable handles; returns {read node name: variable index}, or None when the graph uses a
    variable some other way (the export then fails with a clear error and the Keras path is used)."""
    reads: dict[str, int] = {}
    kept = []
    for node in graph_def.node:
        if node.name in resources:
            continue
        data = [i for i in node.input if not i.startswith("^")]
        sources = [i.split(":")[0] for i in data]
        if node.op == "ReadVariableOp" and sources and sources[0] in resources:
            reads[node.name] = resources[sources[0]]
            dtype = node.attr["dtype"].type
            node.op = "Placeholder"
            del node.input[:]
            for name in list(node.attr):
                del node.attr[name]
            node.attr["dtype"].type = dtype
        elif any(src in resources for src in sources):
            return None
        else:
            controls = [i for i in node.input if i.startswith("^") and i[1:] in resources]
            for name in controls:
                node.input.remove(name)
        kept.append(node)
    # input_map only rewires data edges: control edges from a detached read would wait on an unfed placeholder
    for node in kept:
        for name in [i for i in node.input if i.startswith("^") and i[1:] in reads]:
            node.input.remove(name)
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return reads


def optimize_function(
    traced: Any, variables: Sequence[Any], signature: Sequence[Any], precision: str
) -> tuple[Any, list[Any]]:
    """(tf.function with `signature`, the variables it uses): it computes what the concrete function
    `traced` computes, from a graph grappler has already optimised (bfloat16 rewrite included when
    `precision` is "bf16"), and reads the weights from a few packed variables (one restore instead of one
    per weight, ~0.8 s less at load time). `variables` must hold every variable `traced` captures.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    graph = traced.graph
    by_handle = {id(v.handle): v for v in variables}
    captured: list[tuple[Any, str]] = []
    for outer, inner in zip(traced.captured_inputs, graph.internal_captures, strict=True):
        var = by_handle.get(id(outer))
        if var is None:
            raise ModelError(f"The traced graph captures a tensor that is not a model weight ({inner.name}).")
        captured.append((var, inner.name))
    inputs = [t.name for t in traced.inputs[: len(signature)]]
    outputs = [t.name for t in traced.outputs]

    graph_def = graph.as_graph_def()
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=graph)
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(outputs)
    meta.collection_def["train_op"].CopyFrom(fetch)  # grappler keeps what "train_op" lists
    optimized = tf_optimizer.OptimizeGraph(_grappler_config(precision), meta)

    if precision == "bf16" and not any(
        node.op == "Cast" and node.attr["DstT"].type == _BFLOAT16 for node in optimized.node
    ):
        raise ModelError(
            "This TensorFlow build did not rewrite the graph to bfloat16 (oneDNN off?): use --precision fp32."
        )
    reads = _detach_reads(optimized, {name.split(":")[0]: i for i, (_, name) in enumerate(captured)})
    if reads is None:
        raise ModelError("The optimised graph reads a weight other than by ReadVariableOp; cannot pack it.")
    packed, places = _pack([var for var, _ in captured])

    def body(*args: Any) -> Any:
        feeds = dict(zip(inputs, args, strict=True))
        current = tf.compat.v1.get_default_graph()
        # one read and one split per packed variable: as many nodes as the 690 reads they replace; splitting
        # whole 64-byte rows along the first axis shares the buffer instead of copying it
        parts: list[list[Any]] = []
        for number, table in enumerate(packed):
            mine = [place for place in places if place[0] == number]
            value = tf.raw_ops.ReadVariableOp(resource=current.capture(table.handle), dtype=table.dtype)
            parts.append(tf.split(value, [-(-size // _ROW) for _, _, size, _ in mine], axis=0))
        taken = [0] * len(packed)
        weights = []
        for table, _, size, shape in places:
            block = parts[table][taken[table]]
            taken[table] += 1
            weights.append(tf.reshape(block if size % _ROW == 0 else tf.reshape(block, [-1])[:size], shape))
        for read, index in reads.items():
            feeds[f"{read}:0"] = weights[index]
        return tf.graph_util.import_graph_def(optimized, input_map=feeds, return_elements=outputs, name="")

    wrapped = tf.compat.v1.wrap_function(body, list(signature))

    @tf.function(input_signature=list(signature))
    def infer(*args: Any) -> Any:
        return tuple(wrapped(*args))

    infer.get_concrete_function()
    return infer, packed


def disable_runtime_optimizer() -> None:
    """Turn grappler off for this process (the loaded graph is already optimised)."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def configure_grappler(bf16: bool) -> None:
    """Grappler on for functions this process traces (the Keras path), with the oneDNN bfloat16 rewrite
    when `bf16`."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": False, "auto_mixed_precision_onednn_bfloat16": bf16}
    )


__all__ = ["configure_grappler", "disable_runtime_optimizer", "optimize_function"]
