"""Channel-propagation rules, one module per op family. RULES maps op_type -> rule;
a rule reads the Tracked maps of a node's inputs from the Analysis and sets its outputs'."""
from __future__ import annotations

from collections.abc import Callable

import onnx

from ..analysis import Analysis

Rule = Callable[[Analysis, onnx.NodeProto], None]
RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


def no_rule(an: Analysis, node: onnx.NodeProto) -> None:
    """Unknown op: every channel it reads stops being prunable; its outputs carry none.
    Weights it reads are shared with a barrier: groups slicing them are unprunable."""
    why = f"node '{node.name}' ({node.op_type}) has no pruning rule"
    for x in node.input:
        an.barrier_tracked(x, why)
        if x and an.model.is_initializer(x):
            an.shared_barrier_tensors.setdefault(x, f"weight '{x}' is also read by {why[5:]}")


from . import elementwise, layout, sources  # noqa: E402,F401  (registers the rules)
