"""Concrete per-sample shapes of every tensor, measured by running the model once in
onnxruntime at batch 1. Symbolic inference loses track of merged dims ('4*batch' becomes
a fresh 'unk__0'); the measured shapes do not."""
from __future__ import annotations

import logging

import onnx

from .feeds import example_feeds
from .model import OnnxModel
from .session import ort_session

log = logging.getLogger(__name__)


def probe_shapes(model: OnnxModel, batch: int = 1, seq: int = 8,
                 feeds: dict | None = None) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} for every node output onnxruntime can report; {} on failure.
    `feeds`: run on these inputs instead of example ones of `batch` and `seq`."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    known = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for out in node.output:
            info = model.info(out)
            if out and out not in known and info is not None and info.elem_type:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(out, info.elem_type, None))
                known.add(out)
    try:
        sess = ort_session(proto, optimize=False)
        values = sess.run(None, feeds if feeds is not None else example_feeds(model, batch=batch, seq=seq))
    except Exception as e:  # noqa: BLE001 - a probe is a best-effort aid
        log.debug("%s: shape probe failed: %s", model.label, e)
        return {}
    return {o.name: tuple(v.shape) for o, v in zip(sess.get_outputs(), values)}
