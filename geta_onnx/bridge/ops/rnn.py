"""LSTM and GRU as ONNX defines them, trainable through the ONNX weight tensors.

ONNX tensors (D = num_directions, H = hidden_size, I = input_size, layout 0):
    X [T, B, I]   W [D, G*H, I]   R [D, G*H, H]   B [D, 2*G*H] = [Wb | Rb]
    initial_h / initial_c / Y_h / Y_c [D, B, H]   Y [T, D, B, H]   P [D, 3*H] (LSTM)
with G = 4 gates in ONNX order i, o, f, c (LSTM) or G = 3 gates z, r, h (GRU). Layout 1
(opset 14) is batch first: X [B, T, I], Y [B, T, D, H], states [B, D, H]; the modules
transpose to layout 0 on entry and back on exit.

Two execution paths, chosen per node at build time:
- fused: torch's LSTM/GRU kernels (torch._VF.lstm / gru, what nn.LSTM runs). ONNX gates
  are re-ordered to torch's order (i, f, g, o / r, z, n) by chunk + cat INSIDE forward,
  so gradients reach the ONNX tensors. Needs default activations, no clip, no
  peepholes, input_forget 0 and (GRU) linear_before_reset 1, which is torch's GRU.
  "reverse" runs the forward kernel on the time-flipped input.
- loop: an explicit step-by-step recurrence that implements every attribute.
sequence_lens (per batch entry) is honoured by both: the fused path is used only when
all lengths equal T (checked per call); otherwise the loop masks the steps t >= len of
each sequence, as onnxruntime does: Y is 0 there, Y_h / Y_c are the states after the
last valid step (0 for an empty sequence) and "reverse" starts at step len-1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..context import NodeContext
from ..registry import converter

# ONNX activation name (lower case) -> (fn(x, alpha, beta), uses alpha, uses beta,
# default alpha, default beta). alpha / beta values are consumed from activation_alpha /
# activation_beta in the order of the activation list, only by functions that use them,
# with these defaults once the lists run out (onnxruntime's rnn_helpers).
_ACTIVATIONS = {
    "sigmoid": (lambda x, a, b: torch.sigmoid(x), False, False, 0.0, 0.0),
    "tanh": (lambda x, a, b: torch.tanh(x), False, False, 0.0, 0.0),
    "relu": (lambda x, a, b: torch.relu(x), False, False, 0.0, 0.0),
    "affine": (lambda x, a, b: a * x + b, True, True, 0.0, 0.0),
    "leakyrelu": (lambda x, a, b: F.leaky_relu(x, a), True, False, 0.01, 0.0),
    "thresholdedrelu": (lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)), True, False, 0.0, 0.0),
    "scaledtanh": (lambda x, a, b: a * torch.tanh(b * x), True, True, 0.0, 0.0),
    "hardsigmoid": (lambda x, a, b: torch.clamp(a * x + b, 0.0, 1.0), True, True, 0.2, 0.5),
    "elu": (lambda x, a, b: F.elu(x, a), True, False, 1.0, 0.0),
    "softsign": (lambda x, a, b: F.softsign(x), False, False, 0.0, 0.0),
    "softplus": (lambda x, a, b: F.softplus(x), False, False, 0.0, 0.0),
}


class Activation(nn.Module):
    def __init__(self, name: str, alpha: float, beta: float):
        super().__init__()
        self.name, self.alpha, self.beta = name, alpha, beta

    def forward(self, x):
        # looked up per call: a module holding no lambda stays picklable
        return _ACTIVATIONS[self.name][0](x, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"{self.name}, alpha={self.alpha}, beta={self.beta}"


def _activations(ctx: NodeContext, default: list[str], num_dir: int) -> tuple[list[nn.ModuleList], bool]:
    """Per direction the activation modules (f, g[, h]); and whether they are the defaults."""
    names = ctx.attr("activations")
    if names is None:
        names = default * num_dir
    names = [n.lower() for n in names]
    if len(names) != len(default) * num_dir:
        raise ctx.fail(f"activations lists {len(names)} functions; expected {len(default)} per direction "
                       f"({len(default) * num_dir} for {num_dir} direction(s))")
    unknown = sorted(set(names) - set(_ACTIVATIONS))
    if unknown:
        raise ctx.fail(f"activation(s) {unknown} are not ONNX RNN activations ({sorted(_ACTIVATIONS)})")
    alphas = list(ctx.attr("activation_alpha", []) or [])
    betas = list(ctx.attr("activation_beta", []) or [])
    mods = []
    for name in names:
        _, uses_a, uses_b, alpha, beta = _ACTIVATIONS[name]
        if uses_a and alphas:
            alpha = float(alphas.pop(0))
        if uses_b and betas:
            beta = float(betas.pop(0))
        mods.append(Activation(name, alpha, beta))
    k = len(default)
    per_dir = [nn.ModuleList(mods[d * k:(d + 1) * k]) for d in range(num_dir)]
    is_default = names == [n.lower() for n in default] * num_dir
    return per_dir, is_default


def _reorder(t: torch.Tensor, order: tuple[int, ...], gates: int) -> torch.Tensor:
    """Re-order the gate blocks along dim 0 (a [G*H, ...] tensor), keeping the autograd graph."""
    chunks = t.chunk(gates, 0)
    return torch.cat([chunks[i] for i in order], 0)


class _Recurrent(nn.Module):
    """What LSTM and GRU share: layouts, directions, sequence lengths, output packing."""

    gates: int  # G
    torch_order: tuple[int, ...]  # ONNX gate indices in torch's gate order
    n_states: int  # 2 for LSTM (h, c), 1 for GRU

    def __init__(self, hidden: int, direction: str, layout: int, clip: float | None, acts: list[nn.ModuleList],
                 fused: bool, n_outputs: int):
        super().__init__()
        self.hidden, self.direction, self.layout, self.clip = hidden, direction, layout, clip
        self.num_dir = 2 if direction == "bidirectional" else 1
        self.acts = nn.ModuleList(acts)
        self.fused, self.n_outputs = fused, n_outputs

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, direction={self.direction}, layout={self.layout}, clip={self.clip}, "
                f"path={'fused' if self.fused else 'loop'}")

    def _run(self, x, w, r, b, lens, states, peepholes):
        """x [.., I] in self.layout; states: initial h (and c) in layout or None;
        peepholes P [D, 3H] (LSTM) or None."""
        if self.layout == 1:  # batch first -> [T, B, I]; states [B, D, H] -> [D, B, H]
            x = x.transpose(0, 1)
            states = [s.transpose(0, 1) if s is not None else None for s in states]
        T, B = x.shape[0], x.shape[1]
        states = [s if s is not None else x.new_zeros(self.num_dir, B, self.hidden) for s in states]
        if lens is not None:
            lens = lens.to(device=x.device, dtype=torch.int64)
            if bool((lens == T).all()):  # (a host sync; the common exported case has no lens)
                lens = None  # every sequence is full length: no masking needed
        if self.fused and lens is None:
            y, finals = self._fused(x, w, r, b, states)
        else:
            per_dir = [self._loop(d, x, w[d], r[d], None if b is None else b[d], lens,
                                  [s[d] for s in states], peepholes) for d in range(self.num_dir)]
            y = torch.stack([ys for ys, _ in per_dir], 1)  # [T, D, B, H]
            finals = [torch.stack([f[k] for _, f in per_dir], 0) for k in range(self.n_states)]
        if self.layout == 1:  # Y [T, D, B, H] -> [B, T, D, H]; states -> [B, D, H]
            y = y.permute(2, 0, 1, 3)
            finals = [f.transpose(0, 1) for f in finals]
        outs = (y, *finals)[: self.n_outputs]
        return outs[0] if self.n_outputs == 1 else outs

    def _fused(self, x, w, r, b, states):
        """torch's kernel on re-ordered ONNX weights; returns Y [T, D, B, H] and final states."""
        G, H = self.gates, self.hidden
        params = []
        for d in range(self.num_dir):
            params += [_reorder(w[d], self.torch_order, G), _reorder(r[d], self.torch_order, G)]
            if b is not None:
                params += [_reorder(b[d, : G * H], self.torch_order, G), _reorder(b[d, G * H:], self.torch_order, G)]
        reverse = self.direction == "reverse"
        if reverse:
            x = x.flip(0)
        y, *finals = self._kernel(x, states, params, b is not None, self.num_dir == 2)
        if reverse:
            y = y.flip(0)
        T, B = x.shape[0], x.shape[1]
        return y.reshape(T, B, self.num_dir, H).transpose(1, 2), finals

    def _loop(self, d, x, w, r, b, lens, states, peepholes):
        """One direction, step by step. w [G*H, I], r [G*H, H], b [2*G*H] or None;
        states [B, H] each; returns Y [T, B, H] and the final states."""
        G, H = self.gates, self.hidden
        xw = x @ w.t()  # [T, B, G*H]: the input projection of all steps in one matmul
        rb = None
        if b is not None:
            xw = xw + b[: G * H]
            rb = b[G * H:]
        T = x.shape[0]
        backward = self.direction == "reverse" or (self.direction == "bidirectional" and d == 1)
        steps = range(T - 1, -1, -1) if backward else range(T)
        ys: list[torch.Tensor | None] = [None] * T
        for t in steps:
            new = self._step(d, xw[t], r, rb, states, peepholes)
            if lens is not None:  # freeze the states and zero Y where t >= len
                valid = (t < lens).unsqueeze(1)  # [B, 1]
                new = [torch.where(valid, n, s) for n, s in zip(new, states)]
                ys[t] = torch.where(valid, new[0], torch.zeros_like(new[0]))
            else:
                ys[t] = new[0]
            states = new
        if lens is not None:  # an empty sequence ends in zero states (onnxruntime)
            nonempty = (lens > 0).unsqueeze(1)
            states = [torch.where(nonempty, s, torch.zeros_like(s)) for s in states]
        return torch.stack(ys, 0), states

    def _clip(self, x):
        return x if self.clip is None else torch.clamp(x, -self.clip, self.clip)


class LSTM(_Recurrent):
    gates, torch_order, n_states = 4, (0, 2, 3, 1), 2  # ONNX i,o,f,c -> torch i,f,g,o

    def __init__(self, *args, input_forget: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_forget = input_forget

    def forward(self, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
        return self._run(x, w, r, b, sequence_lens, [initial_h, initial_c], p)

    def _kernel(self, x, states, params, has_biases, bidirectional):
        return torch._VF.lstm(x, states, params, has_biases, 1, 0.0, False, bidirectional, False)

    def _step(self, d, xw_t, r, rb, states, p):
        """One LSTM step (ONNX equations, gates i, o, f, c; f, g, h the activations);
        xw_t [B, 4H] is X_t W^T + Wb; returns [H_t, C_t]."""
        h, c = states
        gates = xw_t + h @ r.t()  # [B, 4H] in ONNX order i, o, f, c
        if rb is not None:
            gates = gates + rb
        gi, go, gf, gc = gates.chunk(4, 1)
        f, g, act_h = self.acts[d]
        if p is not None:  # peepholes: i and f see C_{t-1}, o sees C_t
            pi, po, pf = p[d].chunk(3, 0)
            gi, gf = gi + pi * c, gf + pf * c
        i = f(self._clip(gi))
        forget = 1 - i if self.input_forget else f(self._clip(gf))
        c = forget * c + i * g(self._clip(gc))
        if p is not None:
            go = go + po * c
        h = f(self._clip(go)) * act_h(c)
        return [h, c]


class GRU(_Recurrent):
    gates, torch_order, n_states = 3, (1, 0, 2), 1  # ONNX z,r,h -> torch r,z,n

    def __init__(self, *args, linear_before_reset: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.linear_before_reset = linear_before_reset

    def forward(self, x, w, r, b=None, sequence_lens=None, initial_h=None):
        return self._run(x, w, r, b, sequence_lens, [initial_h], None)

    def _kernel(self, x, states, params, has_biases, bidirectional):
        return torch._VF.gru(x, states[0], params, has_biases, 1, 0.0, False, bidirectional, False)

    def _step(self, d, xw_t, r, rb, states, _no_peepholes):
        """One GRU step (ONNX equations, gates z, r, h); returns [H_t]."""
        (h,) = states
        H = self.hidden
        f, g = self.acts[d]
        xz, xr, xh = xw_t.chunk(3, 1)
        hzr = h @ r[: 2 * H].t()  # [B, 2H]: the z and r recurrences
        if rb is not None:
            hzr = hzr + rb[: 2 * H]
        hz, hr = hzr.chunk(2, 1)
        z = f(self._clip(xz + hz))
        reset = f(self._clip(xr + hr))
        rh, rbh = r[2 * H:], None if rb is None else rb[2 * H:]
        if self.linear_before_reset:  # r (.) (H R_h^T + Rb_h)
            hh = h @ rh.t()
            if rbh is not None:
                hh = hh + rbh
            pre = xh + reset * hh
        else:  # (r (.) H) R_h^T + Rb_h
            pre = xh + (reset * h) @ rh.t()
            if rbh is not None:
                pre = pre + rbh
        cand = g(self._clip(pre))
        return [(1 - z) * cand + z * h]


def _common(ctx: NodeContext, default_acts: list[str]):
    """Attributes both ops share, validated; returns the keyword arguments of _Recurrent."""
    direction = ctx.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.fail(f"direction '{direction}' is not one of forward, reverse, bidirectional")
    num_dir = 2 if direction == "bidirectional" else 1
    hidden = ctx.attr("hidden_size")
    if hidden is None:  # optional in the schema: take it from R [D, G*H, H]
        r_shape = ctx.input_shape(2)
        hidden = r_shape[-1] if r_shape and isinstance(r_shape[-1], int) else None
        if hidden is None:
            raise ctx.fail("hidden_size is not given and R has no static shape to take it from")
    layout = ctx.attr("layout", 0)
    if layout not in (0, 1):
        raise ctx.fail(f"layout {layout} is not 0 (time first) or 1 (batch first)")
    clip = ctx.attr("clip")
    clip = None if clip is None or math.isinf(clip) else float(clip)
    if clip is not None and clip <= 0:
        raise ctx.fail(f"clip must be positive, got {clip}")
    acts, default = _activations(ctx, default_acts, num_dir)
    n_outputs = len(ctx.outputs)
    return dict(hidden=int(hidden), direction=direction, layout=layout, clip=clip, acts=acts,
                n_outputs=n_outputs), default


@converter("LSTM", versions=(1, 7, 14), weights=(1, 2, 3, 7), static=(4, 5, 6))  # lengths, initial states: constants
def convert_lstm(ctx: NodeContext) -> nn.Module:
    kwargs, default_acts = _common(ctx, ["Sigmoid", "Tanh", "Tanh"])
    input_forget = bool(ctx.attr("input_forget", 0))
    fused = default_acts and kwargs["clip"] is None and not input_forget and not ctx.has_input(7)
    return LSTM(**kwargs, fused=fused, input_forget=input_forget)


@converter("GRU", versions=(1, 3, 7, 14), weights=(1, 2, 3), static=(4, 5))
def convert_gru(ctx: NodeContext) -> nn.Module:
    kwargs, default_acts = _common(ctx, ["Sigmoid", "Tanh"])
    lbr = bool(ctx.attr("linear_before_reset", 0))
    fused = default_acts and kwargs["clip"] is None and lbr
    return GRU(**kwargs, fused=fused, linear_before_reset=lbr)
