"""ONNX graph -> torch.fx.GraphModule whose parameters ARE the ONNX initializers.

Layout of the built module:
    module.params.<safe name>   nn.Parameter, one per trainable float initializer
    module.state.<safe name>    persistent buffers (BatchNorm running statistics)
    module.consts.<safe name>   non-persistent buffers (shape / index constants, scalars)
    module.ops.<safe node name> one converter module per ONNX node (owns no tensors)
The fx graph reads each tensor with one get_attr and passes it to every node that uses
it, so sharing in ONNX stays sharing in PyTorch. `module.initializer_of` /
`module.tensor_of` map both ways between qualified torch names and initializer names.
"""
from __future__ import annotations

import copy
import keyword
import operator
import re

import numpy as np
import torch
from torch import fx, nn

from ..errors import GetaError, UnsupportedOpError
from ..graph.model import FLOAT_TYPES, OnnxModel
from . import registry
from .context import NodeContext


class OnnxModule(fx.GraphModule):
    """A trainable view of an ONNX graph (see the module docstring for its layout)."""

    # set by build(); declared here for readers and type checkers
    initializer_of: dict[str, str]  # qualified torch name -> initializer name
    tensor_of: dict[str, str]  # initializer name -> qualified torch name
    input_names: list[str]
    output_names: list[str]
    node_modules: dict[str, str]  # ONNX node name -> qualified module name

    _MAPS = ("initializer_of", "tensor_of", "input_names", "output_names", "node_modules", "per_sample")
    # a graph whose static batch of 1 could not be made dynamic (graph.batch): a batch of N runs
    # as N forwards of one sample, outputs concatenated; autograd then sums the N gradients,
    # i.e. micro-batches of 1 with gradient accumulation (BatchNorm sees one sample at a time)
    per_sample: bool = False

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)  # fx rebuilds the module; our maps travel separately
        for name in self._MAPS:
            setattr(res, name, copy.deepcopy(getattr(self, name), memo))
        return res

    def __call__(self, *args, **kwargs):
        n = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 1
        if not self.per_sample or n <= 1:
            return super().__call__(*args, **kwargs)
        outs = [super(OnnxModule, self).__call__(*(a[i:i + 1] if isinstance(a, torch.Tensor) else a for a in args),
                                                 **kwargs) for i in range(n)]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)

    def parameter(self, initializer: str) -> nn.Parameter:
        """The nn.Parameter holding ONNX initializer `initializer`."""
        qual = self.tensor_of.get(initializer)
        if qual is None or not qual.startswith("params."):
            raise KeyError(f"initializer '{initializer}' is not a trainable parameter of this module")
        return self.get_parameter(qual)

    def initializer_values(self) -> dict[str, np.ndarray]:
        """Current values of every parameter and state buffer, keyed by initializer name."""
        out = {}
        for qual, name in self.initializer_of.items():
            if qual.startswith("consts."):
                continue
            t = self.get_parameter(qual) if qual.startswith("params.") else self.get_buffer(qual)
            out[name] = t.detach().cpu().numpy().copy()
        return out


def to_torch(model: OnnxModel) -> OnnxModule:
    """Build the trainable module; raises UnsupportedOpError listing every unknown op."""
    registry._ensure_loaded()
    converters = _resolve_converters(model)
    params, state = _classify_initializers(model, converters)

    root = nn.Module()
    root.params, root.state, root.consts, root.ops = nn.Module(), nn.Module(), nn.Module(), nn.Module()
    names = _SafeNames()
    qual_of: dict[str, str] = {}
    for name, tensor in model.initializers.items():
        value = _to_tensor(model.array(name), name)
        safe = names.get(name)
        if name in params:
            root.params.register_parameter(safe, nn.Parameter(value))
            qual_of[name] = f"params.{safe}"
        elif name in state:
            root.state.register_buffer(safe, value)
            qual_of[name] = f"state.{safe}"
        else:
            root.consts.register_buffer(safe, value, persistent=False)
            qual_of[name] = f"consts.{safe}"

    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    input_names = [vi.name for vi in model.inputs]
    for name in input_names:
        env[name] = graph.placeholder(names.get(name, prefix="in_"))
    node_modules: dict[str, str] = {}
    frozen_params = frozenset(params)
    for node in model.nodes:
        conv = converters[node.name]
        opset = model.opset(node.domain)
        since = registry.since_version(conv.domain, node.op_type, opset) or 0
        ctx = NodeContext(node, model, opset, since, frozen_params)
        module = conv.fn(ctx)
        safe = names.get(node.name, prefix="op_")
        root.ops.add_module(safe, module)
        node_modules[node.name] = f"ops.{safe}"
        args = []
        for x in node.input:
            if not x:
                args.append(None)
            elif x in env:
                args.append(env[x])
            elif x in qual_of:
                env[x] = graph.get_attr(qual_of[x])
                args.append(env[x])
            else:
                raise GetaError(f"{model.label}: node '{node.name}' reads tensor '{x}', which nothing produces")
        call = graph.call_module(f"ops.{safe}", tuple(args))
        outs = [o for o in node.output]
        if len(outs) == 1:
            env[outs[0]] = call
        else:
            for i, o in enumerate(outs):
                if o:
                    env[o] = graph.call_function(operator.getitem, (call, i))
    output_names = [o.name for o in model.outputs]
    results = []
    for name in output_names:
        if name not in env and name in qual_of:
            env[name] = graph.get_attr(qual_of[name])
        results.append(env[name])
    graph.output(results[0] if len(results) == 1 else tuple(results))

    gm = OnnxModule(root, graph, class_name="OnnxModule")
    gm.initializer_of = {q: n for n, q in qual_of.items()}
    gm.tensor_of = dict(qual_of)
    gm.input_names = input_names
    gm.output_names = output_names
    gm.node_modules = node_modules
    return gm


def _resolve_converters(model: OnnxModel) -> dict[str, registry.Converter]:
    found, missing = {}, []
    for node in model.nodes:
        conv = registry.lookup(node.domain, node.op_type, model.opset(node.domain))
        if conv is None:
            since = registry.since_version(node.domain, node.op_type, model.opset(node.domain))
            missing.append((node.domain, node.op_type, since or model.opset(node.domain), node.name))
        else:
            found[node.name] = conv
    if missing:
        first = {}
        for d, op, v, n in missing:
            first.setdefault((d, op, v), n)
        raise UnsupportedOpError(model.label, [(d, op, v, n) for (d, op, v), n in first.items()])
    return found


def _classify_initializers(model: OnnxModel, converters: dict[str, registry.Converter]) -> tuple[set[str], set[str]]:
    """Decide which initializers are parameters and which are state buffers (see registry)."""
    params, state = set(), set()
    for name, tensor in model.initializers.items():
        is_float = tensor.data_type in FLOAT_TYPES
        numel = int(np.prod(tensor.dims)) if tensor.dims else 1
        roles = set()
        for node, i in model.consumers(name):
            conv = converters[node.name]
            extra = set(conv.static_when(model, node)) if conv.static_when else set()
            if i in extra:
                roles.add("static")
            elif i in conv.state:
                roles.add("state")
            elif i in conv.weights:
                roles.add("weight")
            elif i in conv.static:
                roles.add("static")
            else:
                roles.add("data")
        if "state" in roles:
            state.add(name)
        elif is_float and ("weight" in roles or ("data" in roles and numel > 1)):
            params.add(name)
    return params, state


def _to_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    if array.dtype.kind in "US" or array.dtype == object:
        raise GetaError(f"initializer '{name}': string tensors are not supported by the bridge")
    if array.dtype.name in ("int4", "uint4"):  # onnx's 4-bit numpy types: held in 8-bit containers
        array = array.astype(np.int8 if array.dtype.name == "int4" else np.uint8)
    try:
        return torch.from_numpy(np.array(array, copy=True))
    except TypeError:
        raise GetaError(f"initializer '{name}': dtype {array.dtype} is not supported by the bridge "
                        "(float8 and other exotic types: convert them to float32)") from None


class _SafeNames:
    """Unique Python identifiers for ONNX names (which may hold '/', '.', ':' ...)."""

    def __init__(self) -> None:
        self._given: dict[tuple[str, str], str] = {}
        self._used: set[str] = set()

    def get(self, name: str, prefix: str = "") -> str:
        key = (prefix, name)
        if key in self._given:
            return self._given[key]
        safe = prefix + re.sub(r"\W", "_", name).strip("_")
        if not safe or safe[0].isdigit() or keyword.iskeyword(safe) or hasattr(nn.Module, safe):
            safe = "t_" + safe
        base, k = safe, 1
        while safe in self._used:
            safe, k = f"{base}_{k}", k + 1
        self._used.add(safe)
        self._given[key] = safe
        return safe
