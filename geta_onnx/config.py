"""Validated, frozen configuration dataclasses, shared by the API, the CLI and config files.

Every field has a default a user who gives only a model and data can live with; __post_init__
checks values and raises ConfigError naming the option and what to do.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError


def _check(cond: bool, option: str, message: str) -> None:
    if not cond:
        raise ConfigError(option=option, detail=message)


@dataclass(frozen=True)
class QuantConfig:
    """Bit ranges and where quantizers go (docs/algorithm.md section 1)."""

    weight_bits: tuple[int, int] = (4, 8)  # [b_l, b_u] for weights
    # [b_l, b_u] for activations. 8 by default: both profiles run activations in 8-bit
    # containers, so fewer bits buy no speed, and a range below 8 bits (scale d = q_m / (2^b - 1))
    # makes the uint8 Q span 255 d > q_m, past a Relu6's 6: onnxruntime then keeps the Clip
    # and runs the conv in float (docs/measurements.md, "Activations default to 8 bits")
    act_bits: tuple[int, int] = (8, 8)
    weight_bits_start: int = 16  # upper bound at the start of the projection stage
    act_bits_start: int = 16
    per_channel: bool = False  # weights: one (d, q_m) per output channel instead of per tensor
    learn_t: bool = False  # learn the exponent t (default t = 1, the linear quantizer)
    grad_scale: bool = True  # LSQ-style scaling of the d and q_m gradients by 1 / sqrt(numel * levels)
    quantize_activations: bool = True
    # an activation quantizer on each quantized conv's output (after its BN / Relu / Clip) that
    # no layer quantizes (residual Add inputs, global pooling inputs): onnxruntime fuses
    # DQ -> Conv -> Q into QLinearConv only with that Q, and TensorRT wants residual inputs quantized
    quantize_outputs: bool = True
    # keep in float the group-1 convs with < 8 input channels and a reduction depth < 256 (the
    # stem of a CNN): onnxruntime's int8 QLinearConv is slower than its float Conv there
    # (quant.sites.THIN_CHANNELS; docs/measurements.md, "Thin stems stay float")
    float_thin_convs: bool = True
    # cool-down freezes each width at one the export profile's runtime executes in its own format
    # (optim.targets.DEPLOYABLE: ort MatMul weights 4 or 8, everything else 8; a learned 5-7 goes up
    # to 8, which only refines the grid): ONNX has no int5-7 types, so 5-7-bit weights run in the
    # int8 kernels at int8 size and only cost accuracy. false: the paper's free widths in
    # [b_l, b_u] (BOPs studies; always so under a target_bops budget, which counts those widths)
    deployable_bits: bool = True
    # under a latency budget with the ort profile, a layer whose int8 kernel the latency table times
    # more than 1.2x slower than its float kernel (latency.model.INT8_SLOWER) stays in float, reported
    # as "latency" in the layer table (docs/latency.md)
    float_by_latency: bool = True
    # 4-bit MatMul weights (ort profile: INT4 through MatMulNBits; docs/latency.md, "INT4 MatMul"):
    # "auto" lets a latency budget's table decide per layer (kept where MatMulNBits is not timed
    # slower than int8) and keeps 8 bits without one: MatMulNBits was measured slower than int8 from
    # 32 rows on, so 4 bits would buy size at that cost. "on": wherever the runtime runs it (size
    # first); "off": never
    int4_matmul: str = "auto"
    # int8 weights on a 7-bit grid (|q| <= 63), as onnxruntime's quantizer's `reduce_range`: its u8s8
    # kernels on x86 CPUs without VNNI add pairs of products into a saturating int16, so full-range
    # weights compute another model (docs/deployment.md). "auto": on where a probe of the target's
    # onnxruntime saturates (profile ort; quant.weight_range; the target: [prune] latency_table's when
    # that file records its probe, else this CPU); "on": for a file deployed on other or
    # unknown x86 CPUs; "off": the full grid
    reduce_range: str = "auto"
    # embedding tables (a Gather of a trainable 2-D table) in int8, one step per column, exported as
    # Gather(int8) -> Cast -> Mul (quant/tables.py; docs/deployment.md, "Embedding tables"). Profile
    # ort only: under tensorrt they stay float
    quantize_tables: bool = True
    # LSTM weights W and R in int8, one step per direction, exported as com.microsoft
    # DynamicQuantizeLSTM (quant/recurrent.py; docs/deployment.md, "Recurrent layers"). Profile ort
    # only: under tensorrt they stay float
    quantize_recurrent: bool = True
    skip_first: bool = False  # keep the first weighted layer in float
    skip_last: bool = False  # keep the last weighted layer in float
    exclude: tuple[str, ...] = ()  # fnmatch patterns of ONNX node names kept in float
    calibration_batches: int = 8
    calibration_percentile: float = 99.99  # of |activation|, for q_m of activation quantizers

    def __post_init__(self):
        for name in ("weight_bits", "act_bits"):
            lo, hi = getattr(self, name)
            _check(2 <= lo <= hi <= 32, name, f"expected 2 <= low <= high <= 32, got {lo}:{hi}")
        _check(self.weight_bits_start >= self.weight_bits[1], "weight_bits_start", "must be >= the upper weight bit bound")
        _check(self.act_bits_start >= self.act_bits[1], "act_bits_start", "must be >= the upper activation bit bound")
        _check(0 < self.calibration_percentile <= 100, "calibration_percentile", "must be in (0, 100]")
        _check(self.calibration_batches >= 1, "calibration_batches", "must be >= 1")
        _check(self.int4_matmul in ("auto", "on", "off"), "int4_matmul", f"expected auto, on or off, got "
               f"'{self.int4_matmul}'")
        _check(self.reduce_range in ("auto", "on", "off"), "reduce_range", f"expected auto, on or off, got "
               f"'{self.reduce_range}'")



@dataclass(frozen=True)
class DataConfig:
    """How a data spec becomes batches (geta_onnx.train.data)."""

    batch_size: int = 64
    eval_batch_size: int = 0  # 0: same as batch_size
    scale: str = "auto"  # auto: uint8 / 255, other dtypes as they are; none; unit: train min-max to [0, 1]
    mean: tuple[float, ...] = ()  # per channel, subtracted after scaling; () = none
    std: tuple[float, ...] = ()  # per channel, divides after the mean
    resize: bool = False  # bilinear resize of images to the model's static spatial size
    val_split: float = 0.1  # held-out fraction when the spec has no eval split (0: no eval)
    limit: int = 0  # use only this many (seeded random) training samples; 0 = all
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = 0  # DataLoader worker processes
    # inputs fed one value for the whole run, "NAME=VALUE" (a sample rate: ["sr=16000"]); each becomes a
    # constant of the trained model (graph/interface.py)
    input_values: tuple[str, ...] = ()

    def __post_init__(self):
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(all(len(v.split("=", 1)) == 2 and all(p.strip() for p in v.split("=", 1)) for v in self.input_values),
               "input_values", f"expects NAME=VALUE entries, e.g. [\"sr=16000\"], got {list(self.input_values)}")
        _check(self.eval_batch_size >= 0, "eval_batch_size", "must be >= 0 (0: same as batch_size)")
        _check(self.scale in ("auto", "none", "unit"), "scale", f"expected auto, none or unit, got '{self.scale}'")
        _check(len(self.std) in (0, len(self.mean)), "std", "give as many values as 'mean' (or none)")
        _check(all(s > 0 for s in self.std), "std", "values must be > 0")
        _check(0.0 <= self.val_split < 1.0, "val_split", f"must be in [0, 1), got {self.val_split}")
        _check(self.limit >= 0, "limit", "must be >= 0 (0: use every sample)")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")


@dataclass(frozen=True)
class ScheduleConfig:
    """Training length and the GETA stage boundaries as fractions of the total steps
    (docs/algorithm.md section 3): warm-up [0, S_b), projection [S_b, S_p) whose B periods
    span K_b steps, joint pruning [S_p, S_p + K_p) in P periods, cool-down after.

    The defaults are a fine-tuning schedule: the input is a trained model and the run is a few
    epochs, so pruning is done by 22 % of the steps and the final structure trains for the other
    78 % (the paper's schedule, warmup 0.1, projection 0.2, pruning_start 0.3, pruning 0.4, gave
    the final structure 30 %; docs/algorithm.md section 3 has the measurements)."""

    epochs: int = 0  # 0: chosen from min_steps / max_epochs and the data size
    steps: int = 0  # > 0: total optimizer steps (overrides epochs)
    min_steps: int = 2000  # automatic length: enough epochs for at least this many steps...
    max_epochs: int = 100  # ...but never more epochs than this
    warmup: float = 0.02  # S_b / total
    projection: float = 0.05  # K_b / total
    projection_periods: int = 5  # B
    pruning_start: float = 0.07  # S_p / total
    pruning: float = 0.15  # K_p / total
    pruning_periods: int = 5  # P

    def __post_init__(self):
        _check(self.epochs >= 0, "epochs", f"must be >= 0 (0: automatic), got {self.epochs}")
        _check(self.steps >= 0, "steps", f"must be >= 0 (0: from epochs), got {self.steps}")
        _check(self.min_steps >= 1 and self.max_epochs >= 1, "min_steps", "min_steps and max_epochs must be >= 1")
        for name in ("warmup", "projection", "pruning_start", "pruning"):
            _check(0.0 <= getattr(self, name) <= 1.0, name, "is a fraction of the total steps, in [0, 1]")
        _check(self.projection_periods >= 0 and self.pruning_periods >= 0, "pruning_periods", "periods must be >= 0")
        _check(self.warmup + self.projection <= self.pruning_start + 1e-9, "pruning_start",
               f"must be >= warmup + projection ({self.warmup + self.projection:g}): pruning starts after projection")
        _check(self.pruning_start + self.pruning <= 1.0 + 1e-9, "pruning", "pruning_start + pruning must be <= 1")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop and its loss (geta_onnx.train.loop / losses)."""

    device: str = "cpu"  # cpu, cuda or cuda:N
    seed: int = 0  # shuffling, held-out split, limit and torch / numpy / random
    # auto: task+kd with labels (the original is a trained model: distilling from it recovers the
    # pruned network faster than labels alone), kd without; or task, kd, task+kd
    loss: str = "auto"
    kd: str = "auto"  # distillation flavour: auto (kl for class logits, bce for sigmoid probabilities, else mse), kl, bce, mse
    temperature: float = 2.0  # KL softening T (the loss is scaled by T^2)
    alpha: float = 0.5  # task+kd: alpha * task + (1 - alpha) * kd
    output: int = 0  # which model output the loss reads
    # distillation (loss kd) of a multi-output model: "all" float outputs (a detector's score and
    # box heads, each head trained) or "one" (`output` only: the other heads are pruned untrained)
    kd_outputs: str = "all"
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    # remember the distillation teacher's outputs per sample on a CPU run, so each sample runs the
    # teacher once, not once per epoch (train/teacher_memo.py; off by itself on augmented data)
    teacher_memo: bool = True
    progress: bool = True
    amp: str = "off"  # mixed-precision forward: off, bf16 (CPU or CUDA) or fp16 (CUDA, with a gradient scaler)
    sync_batchnorm: bool = True  # under torchrun: BatchNorm statistics of the global batch (docs/distributed.md)

    def __post_init__(self):
        _check(self.device == "cpu" or self.device.split(":")[0] == "cuda", "device",
               f"expected cpu, cuda or cuda:N, got '{self.device}'")
        _check(self.amp in ("off", "bf16", "fp16"), "amp", f"expected off, bf16 or fp16, got '{self.amp}'")
        _check(self.amp != "fp16" or self.device != "cpu", "amp",
               "fp16 needs --device cuda (on CPU use bf16)")
        _check(self.loss in ("auto", "task", "kd", "task+kd"), "loss",
               f"expected auto, task, kd or task+kd, got '{self.loss}'")
        _check(self.kd in ("auto", "kl", "bce", "mse"), "kd", f"expected auto, kl, bce or mse, got '{self.kd}'")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1]")
        _check(self.output >= 0, "output", "is an output index, >= 0")
        _check(self.kd_outputs in ("all", "one"), "kd_outputs", f"expected all or one, got '{self.kd_outputs}'")
        _check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0: off)")


BUDGETS = ("target_latency_ms", "target_speedup", "target_bops", "target_sparsity")  # the first one set rules
GUARD_DATA = ("auto", "val", "eval", "train")  # [prune] guard_data: where the quality guard's checks score


@dataclass(frozen=True)
class PruneConfig:
    """The pruning budget, ONE of: a share of the prunable groups removed (kept widths rounded
    to `group_divisible`), a target relative BOPs, or a latency target predicted by the
    latency model of the deployment target (docs/latency.md): a speedup over the fp32
    original or a time per batch. `budget` says which one applies: the first set in BUDGETS
    order (target_sparsity has a default, so any other budget set replaces it)."""

    target_sparsity: float | None = 0.5
    target_bops: float | None = None  # relative BOPs (compressed / fp32 32x32)
    target_speedup: float | None = None  # predicted fp32-original / compressed time, e.g. 3.0
    target_latency_ms: float | None = None  # predicted time per batch of the compressed model
    latency_table: str = ""  # a latency table file (docs/latency.md); "": this machine's, measured and cached
    # how a latency budget picks groups: "knapsack" (HALP: loss-based importance per millisecond saved,
    # optim/taylor.py) or "count" (the importance plan of the smallest group count predicted within the
    # budget); docs/latency.md
    latency_selection: str = "knapsack"
    # the quality guard (optim/guard.py, docs/guard.md): a pruning period whose commit drops the held-out
    # quality (accuracy with labels, else agreement / cosine with the original) by more than this is
    # rolled back and pruning stops there; the budget stays the most the run removes. None: off
    max_quality_drop: float | None = None
    # eval batches each guard check scores (cost: one eval of them per check). 0: enough that the
    # tolerance is worth GUARD_SAMPLES_PER_TOLERANCE (25) held-out samples, at least 8 batches, at most
    # the eval split (guarding.guard_batches; docs/guard.md, "How many samples")
    guard_batches: int = 0
    # where the guard's checks score: "val" (the data's validation split: npz val_ arrays, a folder's val/
    # beside test/; the eval split stays unread by the run's decisions), "eval" (the eval split's first
    # guard_batches batches; compress then reports the shipped file on the rest as the figure no decision
    # read) or "train" (as many samples, seeded, held out of the training split and never trained on).
    # "auto": "val" where the data has a validation split, else "eval" (docs/guard.md, "Where the checks score")
    guard_data: str = "auto"
    # with the guard on, the share of each pruning period's steps that trains the structure the last
    # commit left before the guard scores it and the period's removal starts (the check then sees what
    # training recovers of a commit's drop, not the drop itself); 0: scored right at the commit. Off by
    # default: on the digits sample it removed fewer groups at the same quality (docs/guard.md)
    guard_recovery: float = 0.0
    # with the guard on, a commit whose check misses the tolerance gets a second chance: this share of
    # the next period's steps (of the cool-down, after the last period) trains the structure it left, the
    # next removal waits for them, and the guard scores it again; only a miss then rolls the period back.
    # The recovery measured on each retry says whether the next miss is worth one. 0: roll back at once.
    # On by default: on the digits sample it kept more groups within the same tolerance (docs/guard.md).
    # Unused with guard_recovery > 0, where every commit already waits
    guard_retry: float = 0.5
    # the cool-down probe: the budget's structure is scored once this share of the cool-down has trained it,
    # and only then decided on; a commit that misses the tolerance does not stop the pruning. Where the probe
    # misses, the commits' drops scaled by the recovery the probe measured pick the structure the run goes
    # back to for the rest of the cool-down (docs/guard.md, "The cool-down probe"). 0: each commit decides
    # (guard_retry, guard_recovery)
    guard_probe: float = 0.0
    # where the probe goes back: true keeps the cool-down's training of the kept groups and regrows the
    # removed ones from their last values before removal; false restores the whole state of that period's
    # start, discarding the training since (docs/guard.md, "The cool-down probe")
    guard_regrow: bool = True
    # when the quantized, unpruned model already misses max_quality_drop, at most this many layers go back
    # to float (those whose quantization costs the most) and training starts over; 0: the run stops there.
    # When the final model misses it and its fallback too (or it has none: a probe's run), layers go to
    # float in the trained model, up to this many with those of the first check
    guard_float_layers: int = 8
    group_divisible: int = 16  # kept channels per layer: a multiple of this (heads are whole anyway)
    importance: tuple[float, float, float, float, float] = (0.2, 0.2, 0.2, 0.2, 0.2)
    # magnitude, avg magnitude, cosine, first- and second-order Taylor

    def __post_init__(self):
        kind, value = self.budget
        if kind == "target_latency_ms":
            _check(value > 0, kind, f"a time in milliseconds > 0, got {value}")
        elif kind == "target_speedup":
            _check(value > 1, kind, f"a speedup over the original > 1, e.g. 3.0; got {value}")
        elif kind == "target_bops":
            _check(0 < value <= 1, kind, f"a fraction in (0, 1], got {value}")
        else:
            _check(0 <= value < 1, kind, f"a fraction in [0, 1), got {value}")
        _check(self.group_divisible >= 1, "group_divisible", "must be >= 1")
        _check(self.max_quality_drop is None or 0 <= self.max_quality_drop < 1, "max_quality_drop",
               f"a drop in [0, 1), e.g. 0.005 for half a point of accuracy; got {self.max_quality_drop}")
        _check(self.guard_batches >= 0, "guard_batches", "must be >= 0 (0: sized to the tolerance)")
        _check(self.guard_data in GUARD_DATA, "guard_data", f"expected {', '.join(GUARD_DATA)}, got '{self.guard_data}'")
        _check(0 <= self.guard_recovery < 1, "guard_recovery", f"a share of a pruning period in [0, 1), got "
               f"{self.guard_recovery}")
        _check(0 <= self.guard_retry < 1, "guard_retry", f"a share of a pruning period in [0, 1), got {self.guard_retry}")
        _check(0 <= self.guard_probe < 1, "guard_probe", f"a share of the cool-down in [0, 1), got {self.guard_probe}")
        _check(self.guard_float_layers >= 0, "guard_float_layers", "must be >= 0 (0: no layer goes back to float)")
        _check(self.latency_selection in ("count", "knapsack"), "latency_selection",
               f"expected count or knapsack, got '{self.latency_selection}'")
        _check(len(self.importance) == 5 and all(w >= 0 for w in self.importance), "importance",
               "five non-negative weights: magnitude, avg_magnitude, cosine, taylor_first, taylor_second")

    @property
    def budget(self) -> tuple[str, float]:
        """(option name, value) of the budget that applies."""
        for name in BUDGETS:
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise ConfigError("give a budget: option 'target_sparsity', 'target_bops', 'target_speedup' or "
                          "'target_latency_ms'")

    @property
    def latency_budget(self) -> bool:
        return self.budget[0] in ("target_latency_ms", "target_speedup")


@dataclass(frozen=True)
class OptimConfig:
    """QASSO's base optimizer and learning rates (docs/algorithm.md: Adam 1e-3 for small
    CNNs, SGD 0.1 + cosine for ResNets, AdamW 3e-5 for BERT-like models; lr_quant 1e-3)."""

    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    lr_quant: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # constant | cosine | linear
    bit_reduction: float = 0.0  # bits per projection period; 0: (start - b_u) / B
    # forget rate when cos(c, g) < 0 (optim.qasso.forget_rate): "budget" (default) forgets R
    # progressively within the descent budget; "spec" takes the paper's 0.1 % of it (docs/algorithm.md),
    # which leaves R nearly untouched until the commit, and scored lower (docs/measurements.md, "End to end")
    forget: str = "budget"

    def __post_init__(self):
        _check(self.optimizer in ("sgd", "adam", "adamw"), "optimizer", f"expected sgd, adam or adamw, got '{self.optimizer}'")
        _check(self.lr > 0 and self.lr_quant > 0, "lr", "learning rates must be > 0")
        _check(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.lr_schedule in ("constant", "cosine", "linear"), "lr_schedule",
               f"expected constant, cosine or linear, got '{self.lr_schedule}'")
        _check(self.bit_reduction >= 0, "bit_reduction", "must be >= 0 (0: automatic)")
        _check(self.forget in ("spec", "budget"), "forget", f"expected spec or budget, got '{self.forget}'")


@dataclass(frozen=True)
class ExportConfig:
    """What `compress` does after training: the QDQ profile and the onnxruntime validation."""

    profile: str = "ort"  # ort (uint8 activations, INT4 MatMul weights) or tensorrt (symmetric int8)
    batches: tuple[int, ...] = (1, 32)  # latency batch sizes of the report
    threads: int = 2  # onnxruntime intra-op threads of the latency measurement
    repeats: int = 30  # timed runs per model and batch (median reported)
    eval_limit: int = 0  # score at most this many eval samples (0: the whole eval split)
    plots: bool = True  # write the PNG plots beside the report
    dynamic_batch: bool = False  # a static batch-1 input made dynamic for training stays dynamic in the output
    # profile ort: also time the float twin of the export (the same pruned model without Q/DQ)
    # and ship it when onnxruntime runs it faster at no quality cost (bench/choice.py)
    float_fallback: bool = True

    def __post_init__(self):
        _check(self.profile in ("ort", "tensorrt"), "profile", f"expected ort or tensorrt, got '{self.profile}'")
        _check(len(self.batches) > 0 and all(int(b) >= 1 for b in self.batches), "batches",
               f"batch sizes >= 1, e.g. [1, 32]; got {list(self.batches)}")
        _check(self.threads >= 1, "threads", "must be >= 1")
        _check(self.repeats >= 1, "repeats", "must be >= 1")
        _check(self.eval_limit >= 0, "eval_limit", "must be >= 0 (0: every eval sample)")


def to_dict(config) -> dict:
    return asdict(config)


def from_dict(cls, data: dict, *, section: str = ""):
    """Build a config dataclass from a dict (a TOML / YAML section or command-line values),
    rejecting unknown keys (with a suggestion) and values of the wrong type; errors name the
    key as 'section.key'."""
    import difflib

    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    qualified = (lambda key: f"{section}.{key}") if section else (lambda key: key)
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown option '{qualified(key)}'{hint}")
    values = {k: _typed(v, hints[k], qualified(k)) for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as e:
        if e.option is None:
            raise
        raise ConfigError(option=qualified(e.option), detail=e.detail) from None


def _show(value) -> str:
    """A value as the user wrote it in TOML / YAML (true, not True)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _typed(value, hint, option: str):
    """`value` checked against the field's annotation (bool, int, float, str, X | None,
    tuple[T, ...], tuple[T1, T2]); lists become tuples, ints become floats where a float is
    expected. A bool is never a number here: `lr = true` is a mistake, not 1.0."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(value, inner, option)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(option=option, detail=f"expects a list, e.g. {_example(args)}, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(v, args[0], option) for v in value)
        if len(value) != len(args):
            raise ConfigError(option=option, detail=f"expects a list of {len(args)} values, e.g. {_example(args)}, "
                                                    f"got {len(value)}")
        return tuple(_typed(v, a, option) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(option=option, detail=f"expects true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(option=option, detail=f"expects an integer, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(option=option, detail=f"expects a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(option=option, detail=f"expects a finite number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(option=option, detail=f"expects a string, got {_show(value)}")
        return value
    return value


def _example(args) -> str:
    sample = {int: "4", float: "0.5", str: '"a"', bool: "true"}
    if len(args) == 2 and args[1] is Ellipsis:
        return f"[{sample.get(args[0], '...')}, ...]"
    return "[" + ", ".join(sample.get(a, "...") for a in args) + "]"


__all__ = ["BUDGETS", "DataConfig", "ExportConfig", "OptimConfig", "PruneConfig", "QuantConfig", "ScheduleConfig",
           "TrainConfig", "field", "from_dict", "to_dict"]
