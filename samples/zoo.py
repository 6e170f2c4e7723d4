"""The model zoo: small, seeded PyTorch models covering the architecture patterns the
bridge (and later the pruning analysis) must handle.

Every entry of ZOO is a ZooModel with
- build():                 the nn.Module, re-initialised from a fixed torch.Generator so the
                           weights are random and pairwise distinct (the legacy exporter merges
                           equal initializers behind Identity nodes; all-zero biases would
                           collapse into one tensor)
- example_inputs(batch, seq=None, seed=0):
                           a dict input name -> tensor, in forward() argument order
- input_names / output_names, dynamic ({input name: {axis: dim name}}: the batch axis, and
                           the sequence axis of sequence models)
- task:                    "classification" (output 0 holds logits on axis 1: (B, C) or
                           per-pixel (B, C, H, W)) or "regression" (MSE on output 0)
- lr:                      an SGD learning rate for the 30-step training test
- exporters:               the exporters known to work (see samples.export_zoo); an exporter
                           left out carries a comment saying why

Models stay tiny (CIFAR-like 32x32 images, sequences of ~12 tokens, < 1M parameters) so the
whole zoo trains in seconds on one CPU core. No torchvision / transformers: the layers are
written here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0
TASKS = ("classification", "regression")


# --------------------------------------------------------------------------- init
def seeded_init_(model: nn.Module, seed: int = SEED) -> nn.Module:
    """Re-initialise every parameter and BatchNorm statistic from one torch.Generator.

    Weights: N(0, 1/fan_in) (fan_in = numel / shape[0]); biases N(0, 0.1^2); norm scales
    1 + N(0, 0.1^2); embeddings N(0, 0.5^2); tokens / positional tables with a leading
    dim of 1 N(0, 0.2^2); BatchNorm running_mean N(0, 0.1^2), running_var U(0.5, 1.5).
    All values are random, so no two tensors are equal (the legacy exporter would merge
    them) and BatchNorm eval differs from train mode."""
    g = torch.Generator().manual_seed(seed)

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype)

    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for mod in model.modules():
            for pname, p in mod.named_parameters(recurse=False):
                if isinstance(mod, norms):
                    p.copy_(1 + 0.1 * randn(p) if pname == "weight" else 0.1 * randn(p))
                elif isinstance(mod, nn.Embedding):
                    p.copy_(0.5 * randn(p))
                elif p.dim() >= 2 and p.shape[0] > 1:
                    p.copy_(randn(p) / math.sqrt(p.numel() / p.shape[0]))
                elif p.dim() >= 2:
                    p.copy_(0.2 * randn(p))
                else:
                    p.copy_(0.1 * randn(p))
            for bname, b in mod.named_buffers(recurse=False):
                if bname == "running_mean":
                    b.copy_(0.1 * randn(b))
                elif bname == "running_var":
                    b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return model


# --------------------------------------------------------------------------- registry
InputFactory = Callable[[int, int, torch.Generator], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ZooModel:
    name: str
    factory: Callable[[], nn.Module]
    make_inputs: InputFactory  # (batch, seq, generator) -> {name: tensor}
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]
    task: str
    lr: float
    description: str
    exporters: tuple[str, ...] = ("legacy", "dynamo")
    seq_len: int | None = None  # default length of the dynamic sequence axis (None: no such axis)
    max_seq: int | None = None  # upper bound of the sequence axis (position tables)
    # exporter -> dim names that exporter cannot keep dynamic (exported static; reason in notes)
    static_dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # exporter -> parameter values its ONNX file holds beyond the PyTorch model (e.g. a tied weight
    # exported as two tensors); the bridge then trains a different model (reason in notes)
    extra_params: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default=())

    def build(self, seed: int = SEED) -> nn.Module:
        return seeded_init_(self.factory(), seed).eval()

    def example_inputs(self, batch: int = 2, seq: int | None = None, seed: int = SEED) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        inputs = self.make_inputs(batch, seq or self.seq_len or 0, g)
        assert tuple(inputs) == self.input_names, (self.name, tuple(inputs))
        return inputs

    def dynamic_for(self, exporter: str) -> dict[str, dict[int, str]]:
        """The dynamic axes an exporter ('legacy', 'dynamo', or a '_fold' variant) keeps."""
        fixed = self.static_dims.get(exporter.split("_")[0], ())
        return {k: {a: d for a, d in axes.items() if d not in fixed} for k, axes in self.dynamic.items()}

    def seq_dynamic(self, exporter: str) -> bool:
        """Whether the sequence axis (any dynamic axis but the batch) stays dynamic in that export."""
        return self.seq_len is not None and any(set(axes) - {0} for axes in self.dynamic_for(exporter).values())

    def param_count(self) -> int:
        return sum(p.numel() for p in self.build().parameters())


ZOO: dict[str, ZooModel] = {}


def register(entry: ZooModel) -> ZooModel:
    assert entry.task in TASKS, entry.task
    assert entry.name not in ZOO, entry.name
    ZOO[entry.name] = entry
    return entry


def get(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model '{name}'; known: {', '.join(ZOO)}") from None


def make_target(entry: ZooModel, output: torch.Tensor, seed: int = SEED) -> torch.Tensor:
    """A fixed random target for output 0: class indices (output without axis 1) or values."""
    g = torch.Generator().manual_seed(seed + 1)
    if entry.task == "classification":
        shape = (output.shape[0],) + tuple(output.shape[2:])
        return torch.randint(0, output.shape[1], shape, generator=g)
    return torch.randn(output.shape, generator=g, dtype=output.dtype)


def task_loss(entry: ZooModel, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if entry.task == "classification":
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


def _image(c: int, h: int, w: int, name: str = "image") -> InputFactory:
    return lambda batch, seq, g: {name: torch.randn(batch, c, h, w, generator=g)}


def _tokens(vocab: int) -> InputFactory:
    return lambda batch, seq, g: {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)}


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act if act is not None else nn.ReLU())


# --------------------------------------------------------------------------- 1. resnet
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:  # downsampling block: 1x1 projection shortcut
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, widths[0])
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, image):
        x = self.layers(self.stem(image))
        return self.fc(torch.flatten(self.pool(x), 1))


register(ZooModel(
    "resnet", ResNet, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.05,
    description="ResNet-style: BatchNorm, residual Adds, stride-2 blocks with 1x1 projection shortcuts",
))


# --------------------------------------------------------------------------- 2. vgg
class VGG(nn.Module):
    def __init__(self, cfg=(16, 16, "M", 32, 32, "M", 64, "M"), num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for c in cfg:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
        self.features = nn.Sequential(*layers)
        # 32x32 input, three 2x pools -> 4x4 spatial: channel c maps to features 16c..16c+15
        self.classifier = nn.Sequential(nn.Linear(cin * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, image):
        return self.classifier(torch.flatten(self.features(image), 1))


register(ZooModel(
    "vgg", VGG, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.05,
    description="VGG-style: conv-bn-relu stacks, MaxPool, Flatten -> Linear (channels map into Linear features)",
))


# --------------------------------------------------------------------------- 3. mobilenetv2
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, hswish: bool = False):
        super().__init__()
        hidden = cin * expand
        act = nn.Hardswish if hswish else nn.ReLU6  # ReLU6 exports as Clip(0, 6)
        layers = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, act=act()))
        layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act()))  # depthwise
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2, act=nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            InvertedResidual(24, 32, 2, 4, hswish=True),
            InvertedResidual(32, 32, 1, 4, hswish=True),
        )
        self.head = _conv_bn(32, 128, 1, act=nn.Hardswish())
        self.fc = nn.Linear(128, num_classes)

    def forward(self, image):
        x = self.head(self.blocks(self.stem(image)))
        return self.fc(x.mean((2, 3)))


register(ZooModel(
    "mobilenetv2", MobileNetV2, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.05,
    description="MobileNetV2-style: inverted residuals, depthwise conv, ReLU6 (Clip), HardSwish",
))


# --------------------------------------------------------------------------- 4. unet
def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn(cin, cout), _conv_bn(cout, cout))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.enc1, self.enc2, self.mid = _double_conv(3, 16), _double_conv(16, 32), _double_conv(32, 64)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = _double_conv(64, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = _double_conv(32, 16)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, image):
        e1 = self.enc1(image)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))  # skip connections: channel Concat
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


register(ZooModel(
    "unet", UNet, _image(3, 16, 16), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.2,
    description="UNet-style: ConvTranspose up-sampling, Concat skips, per-pixel class logits (B, 3, H, W)",
))


# --------------------------------------------------------------------------- 5. vit
class SelfAttention(nn.Module):
    """Multi-head attention written out: reshape to (B, N, heads, head_dim), transpose."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, bias=None):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1) @ v  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, image: int = 32, patch: int = 8, dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp: int = 128, num_classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


register(ZooModel(
    "vit", ViT, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.05,
    description="ViT-style: patch-embedding Conv, cls token, positional embedding, hand-written MHA, LayerNorm, GELU MLP",
))


# --------------------------------------------------------------------------- 6. bert
class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, inter: int):
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)
        self.inter, self.out = nn.Linear(dim, inter), nn.Linear(inter, dim)

    def forward(self, x, mask_bias):
        x = self.ln1(x + self.attn(x, mask_bias))  # post-LN, as in BERT
        return self.ln2(x + self.out(F.gelu(self.inter(x))))


class Bert(nn.Module):
    def __init__(self, vocab: int = 128, max_len: int = 32, dim: int = 64, depth: int = 2, heads: int = 4,
                 inter: int = 128, num_labels: int = 3):
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        self.register_buffer("position_ids", torch.arange(max_len).unsqueeze(0))
        self.ln = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(dim, heads, inter) for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, input_ids, attention_mask):
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.ln(self.word(input_ids) + self.position(positions))  # two Gathers
        # int64 mask (1 = token, 0 = padding) -> additive bias (B, 1, 1, L)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)


def _bert_inputs(batch: int, seq: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 128, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(1, batch):  # rows after the first carry 1, 2, ... padding tokens
        mask[b, seq - min(b, seq - 1):] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


register(ZooModel(
    "bert", Bert, _bert_inputs, ("input_ids", "attention_mask"), ("logits",),
    {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
    "classification", lr=0.05, seq_len=12, max_seq=32,
    description="BERT-style: token + position Gathers, int64 attention mask -> additive bias, post-LN, GELU, tanh pooler",
))


# --------------------------------------------------------------------------- 7. mha
class MHABlockModel(nn.Module):
    def __init__(self, din: int = 16, dim: int = 64, heads: int = 4, num_classes: int = 4):
        super().__init__()
        self.inp = nn.Linear(din, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, features):
        x = self.inp(features)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.ffn(self.ln2(x))
        return self.head(x.mean(1))


register(ZooModel(
    "mha", MHABlockModel, lambda batch, seq, g: {"features": torch.randn(batch, seq, 16, generator=g)},
    ("features",), ("logits",), {"features": {0: "batch", 1: "seq"}},
    "classification", lr=0.05, seq_len=10,
    description="Transformer block built on torch.nn.MultiheadAttention (packed in_proj weight), mean pooling",
    static_dims={"legacy": ("seq",)},
    notes=("legacy: the TorchScript trace of F.multi_head_attention_forward bakes the sequence length into "
           "the head-split Reshape (shape (10, B*heads, 16)), so a dynamic seq axis would export a graph that "
           "fails in onnxruntime at any other length; exported with a static seq axis (batch stays dynamic)",),
))


# --------------------------------------------------------------------------- 8. lstm
_RNN_DYNAMO_NOTE = (
    "dynamo: torch.export specialises the time axis of nn.LSTM / nn.GRU (ConstraintViolationError "
    "'You marked seq as dynamic but your code specialized it to be a constant'); torch.onnx then falls "
    "back in a process-state-dependent way (the first export in a process keeps the axis symbolic, later "
    "ones fix it), so the dynamo exports use a static sequence axis (batch stays dynamic)")

class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 128, emb: int = 32, hidden: int = 48, num_classes: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, input_ids):
        out, _ = self.lstm(self.embed(input_ids))
        return self.fc(out.mean(1))


register(ZooModel(
    "lstm", LSTMClassifier, _tokens(128), ("input_ids",), ("logits",), {"input_ids": {0: "batch", 1: "seq"}},
    "classification", lr=0.5, seq_len=12,
    description="Embedding -> 2-layer bidirectional LSTM -> mean over time -> Linear",
    static_dims={"dynamo": ("seq",)},
    notes=(_RNN_DYNAMO_NOTE,),
))


# --------------------------------------------------------------------------- 9. gru
class GRURegressor(nn.Module):
    def __init__(self, din: int = 8, hidden: int = 32, dout: int = 2):
        super().__init__()
        self.gru = nn.GRU(din, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, dout)

    def forward(self, features):
        out, _ = self.gru(features)
        return self.fc(out)  # one prediction per time step


register(ZooModel(
    "gru", GRURegressor, lambda batch, seq, g: {"features": torch.randn(batch, seq, 8, generator=g)},
    ("features",), ("prediction",), {"features": {0: "batch", 1: "time"}},
    "regression", lr=0.5, seq_len=20,
    description="GRU sequence-to-sequence regressor (per-step Linear head)",
    static_dims={"dynamo": ("time",)},
    notes=(_RNN_DYNAMO_NOTE,),
))


# --------------------------------------------------------------------------- 10a. senet
class SEBlock(nn.Module):
    """Residual block with squeeze-excitation: channel gating Mul by a Sigmoid."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int = 4):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.fc1, self.fc2 = nn.Linear(cout, cout // reduction), nn.Linear(cout // reduction, cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.body(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        return F.relu(y * s[:, :, None, None] + self.shortcut(x))


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2)
        self.blocks = nn.Sequential(SEBlock(16, 32, 2), SEBlock(32, 32, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, image):
        return self.fc(self.blocks(self.stem(image)).mean((2, 3)))


register(ZooModel(
    "senet", SENet, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.1,
    description="Squeeze-excitation residual blocks: ReduceMean -> Linear -> Sigmoid -> channel Mul",
))


# --------------------------------------------------------------------------- 10b. densenet
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)  # features grow by `growth` channels


class DenseNet(nn.Module):
    def __init__(self, growth: int = 8, num_classes: int = 10):
        super().__init__()
        c = 16
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False)]
        for _ in range(3):
            layers.append(DenseLayer(c, growth))
            c += growth
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 24, 1, bias=False), nn.AvgPool2d(2)]  # transition
        c = 24
        for _ in range(2):
            layers.append(DenseLayer(c, growth))
            c += growth
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, image):
        return self.fc(self.features(image))


register(ZooModel(
    "densenet", DenseNet, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.1,
    description="DenseNet-style: Concat of growing features, pre-activation BN, AvgPool transition",
))


# --------------------------------------------------------------------------- 11. resnext
class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, width: int, stride: int, groups: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, width, 1),
            _conv_bn(width, width, 3, stride, groups=groups),  # grouped 3x3 (cardinality)
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 32, 3, 2)
        self.blocks = nn.Sequential(Bottleneck(32, 64, 32, 1), Bottleneck(64, 128, 64, 2), Bottleneck(128, 128, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, image):
        return self.fc(self.pool(self.blocks(self.stem(image))).flatten(1))


register(ZooModel(
    "resnext", ResNeXt, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.05,
    description="ResNeXt-style bottlenecks with grouped 3x3 conv (groups=4)",
))


# --------------------------------------------------------------------------- 12. audio1d
class Audio1D(nn.Module):
    def __init__(self, num_classes: int = 6):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 16, 9, 4, 4, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 5, 2, 2, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, audio):
        return self.fc(self.net(audio))


register(ZooModel(
    "audio1d", Audio1D, lambda batch, seq, g: {"audio": torch.randn(batch, 1, 1600, generator=g)},
    ("audio",), ("logits",), {"audio": {0: "batch"}},
    "classification", lr=0.2,
    description="1-D conv audio classifier: Conv1d, BatchNorm1d, MaxPool1d, global average pool",
))


# --------------------------------------------------------------------------- 13. mixer
class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x):
        x = x + self.token_mlp(self.ln1(x).transpose(1, 2)).transpose(1, 2)  # mixes along tokens
        return x + self.channel_mlp(self.ln2(x))


class Mixer(nn.Module):
    def __init__(self, image: int = 32, patch: int = 8, dim: int = 48, depth: int = 2, num_classes: int = 10):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*(MixerBlock(tokens, dim, 32, 96) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(1))


register(ZooModel(
    "mixer", Mixer, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.05,
    description="MLP-Mixer: token-mixing MLP on transposed tokens, channel MLP, LayerNorm, GELU",
))


# --------------------------------------------------------------------------- 14. fpn (GroupNorm + Resize)
class GNUpsampleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.GroupNorm(4, 16), nn.SiLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.GroupNorm(8, 32), nn.SiLU())
        self.lateral = nn.Conv2d(16, 32, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")  # Resize (nearest)
        self.dec = nn.Sequential(nn.Conv2d(32, 16, 3, 1, 1), nn.GroupNorm(4, 16), nn.ReLU())
        self.out = nn.Conv2d(16, 1, 3, 1, 1)

    def forward(self, image):
        e1 = self.enc1(image)  # H/2
        e2 = self.enc2(e1)  # H/4
        d = self.dec(self.up(e2) + self.lateral(e1))  # top-down path: upsample + lateral Add
        return self.out(self.up(d))  # per-pixel regression (B, 1, H, W)


register(ZooModel(
    "fpn", GNUpsampleNet, _image(3, 32, 32), ("image",), ("depth",), {"image": {0: "batch"}},
    "regression", lr=0.05,
    description="FPN-style dense regressor: GroupNorm, SiLU, nearest Upsample (Resize), lateral Add",
))


# --------------------------------------------------------------------------- 15. convnext
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permute to channels-last and back)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.empty(dim))  # layer scale: a parameter in a Mul

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)  # channels-last: Linear layers act on channels
        y = self.pw2(F.gelu(self.pw1(self.ln(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, 4), LayerNorm2d(32, eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.down = nn.Sequential(LayerNorm2d(32, eps=1e-6), nn.Conv2d(32, 64, 2, 2))
        self.stage2 = ConvNeXtBlock(64)
        self.norm = nn.LayerNorm(64, eps=1e-6)
        self.head = nn.Linear(64, num_classes)

    def forward(self, image):
        x = self.stage2(self.down(self.stage1(self.stem(image))))
        return self.head(self.norm(x.mean((2, 3))))


register(ZooModel(
    "convnext", ConvNeXt, _image(3, 32, 32), ("image",), ("logits",), {"image": {0: "batch"}},
    "classification", lr=0.05,
    description="ConvNeXt-style: depthwise 7x7, channels-last LayerNorm via permute, pointwise Linear MLP, layer-scale Mul",
))


# --------------------------------------------------------------------------- 16. tcn
class CausalConv1d(nn.Conv1d):
    """Dilated Conv1d padded on the left only (explicit Pad: the output at t sees inputs <= t)."""

    def forward(self, x):
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class TCN(nn.Module):
    def __init__(self, cin: int = 3, width: int = 16):
        super().__init__()
        self.inp = CausalConv1d(cin, width, 3)
        self.blocks = nn.ModuleList(CausalConv1d(width, width, 3, dilation=d) for d in (2, 4))
        self.out = nn.Conv1d(width, 1, 1)

    def forward(self, signal):
        x = F.relu(self.inp(signal))
        for conv in self.blocks:
            x = x + F.relu(conv(x))  # residual
        return self.out(x)  # (B, 1, T): one value per time step


register(ZooModel(
    "tcn", TCN, lambda batch, seq, g: {"signal": torch.randn(batch, 3, seq, generator=g)},
    ("signal",), ("prediction",), {"signal": {0: "batch", 2: "time"}},
    "regression", lr=0.05, seq_len=24,
    description="Temporal conv net: dilated causal Conv1d with explicit left Pad, residual Adds, dynamic time axis",
))


# --------------------------------------------------------------------------- 17. tiedlm
class TiedLM(nn.Module):
    """Next-token model with a causal mask and the output layer tied to the token embedding."""

    def __init__(self, vocab: int = 96, dim: int = 48, heads: int = 4, max_len: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.empty(1, max_len, dim))
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, input_ids):
        n = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos[:, :n]
        causal = torch.triu(torch.full((n, n), -10000.0, device=x.device), 1)  # Trilu
        x = x + self.attn(self.ln1(x), causal)
        x = x + self.mlp(self.ln2(x))
        return self.ln_f(x[:, -1]) @ self.embed.weight.t()  # tied: one tensor in Gather and MatMul


register(ZooModel(
    "tiedlm", TiedLM, _tokens(96), ("input_ids",), ("logits",), {"input_ids": {0: "batch", 1: "seq"}},
    "classification", lr=0.05, seq_len=12, max_seq=32,
    description="Causal LM head: Trilu causal mask, embedding weight tied to the output projection (one initializer, two uses)",
    extra_params={"dynamo": 96 * 48},
    notes=("dynamo: the onnxscript optimizer constant-folds embed.weight.t() into a new initializer 't', so the "
           "ONNX file holds the tied weight twice (Gather reads 'embed.weight', the output MatMul reads 't'): the "
           "bridged model has 96*48 more parameter values and the two copies drift apart in training. The legacy "
           "export (no constant folding) keeps Transpose(embed.weight) in the graph: one tensor, two uses",),
))


# --------------------------------------------------------------------------- bridge checks
# Shared by tests/test_zoo.py (which asserts on them) and tools/zoo_report.py (which prints them).
PARITY_RTOL = 1e-4  # max |bridge - reference| / max |reference|, per output
TRAIN_STEPS = 30
TRAIN_BATCH = 4
TRAIN_RATIO = 0.9  # the loss after TRAIN_STEPS SGD steps must be below this fraction of the first


@dataclass(frozen=True)
class ParityResult:
    batch: int
    seq: int | None
    max_abs: float  # vs onnxruntime, worst output
    max_rel: float  # vs onnxruntime, relative to the reference's max magnitude
    torch_abs: float  # vs the original PyTorch module
    torch_rel: float
    shapes_ok: bool


def parity_inputs(entry: ZooModel, exporter: str) -> list[tuple[int, int | None]]:
    """(batch, seq) pairs of the parity check: batch 2 at the export's shapes, then batch 3
    (dynamic batch) with a shorter sequence where the export keeps the sequence axis dynamic."""
    seq = entry.seq_len - 3 if entry.seq_dynamic(exporter) else None
    return [(2, None), (3, seq)]


def check_parity(entry: ZooModel, proto, module, batch: int, seq: int | None = None, seed: int = 1) -> ParityResult:
    """The bridged module (put in eval mode) vs onnxruntime on `proto` (the exported file, graph
    optimisations off) and vs the original PyTorch module, on seeded inputs."""
    import numpy as np

    from geta_onnx.bridge import compare_outputs, run_bridge, run_onnxruntime

    inputs = entry.example_inputs(batch, seq, seed)
    feeds = {k: v.numpy() for k, v in inputs.items()}
    module.eval()
    got = run_bridge(module, feeds)
    want = run_onnxruntime(proto, feeds)
    with torch.no_grad():
        ref = entry.build()(**inputs)
    ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
    names = list(entry.output_names)
    d_ort = compare_outputs(names, got, want)
    d_pt = compare_outputs(names, got, ref)
    ok = all(d.shape_ok for d in d_ort + d_pt) and all(np.asarray(g).dtype == np.asarray(w).dtype for g, w in zip(got, want))
    return ParityResult(batch, seq, max(d.max_abs for d in d_ort), max(d.max_rel for d in d_ort),
                        max(d.max_abs for d in d_pt), max(d.max_rel for d in d_pt), ok)


def _first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def check_gradients(entry: ZooModel, module, batch: int = 2, seed: int = SEED) -> dict[str, float]:
    """Backward of the task loss (module in eval mode, so BatchNorm is affine and a conv bias
    before it keeps a real gradient): the gradient norm of every nn.Parameter, keyed by
    qualified name (NaN where the gradient is missing or not finite)."""
    inputs = entry.example_inputs(batch, seed=seed)
    module.eval()
    module.zero_grad()
    out = _first_output(module(*inputs.values()))
    task_loss(entry, out, make_target(entry, out.detach(), seed)).backward()
    norms = {}
    for qual, p in module.named_parameters():
        g = p.grad
        norms[qual] = float(g.norm()) if g is not None and bool(torch.isfinite(g).all()) else float("nan")
    return norms


def check_training(entry: ZooModel, module=None, steps: int = TRAIN_STEPS, batch: int = TRAIN_BATCH,
                   seed: int = SEED) -> list[float]:
    """`steps` plain SGD steps (lr from the registry) in train mode on one fixed seeded batch;
    returns the losses before each step and after the last one (steps + 1 values).
    `module` is a bridged module (inputs passed positionally); None trains the original
    PyTorch model the same way (the reference trajectory)."""
    inputs = list(entry.example_inputs(batch, seed=seed).values())
    module = entry.build() if module is None else module
    module.train()
    with torch.no_grad():
        target = make_target(entry, _first_output(module(*inputs)).detach(), seed)
    opt = torch.optim.SGD(module.parameters(), lr=entry.lr)
    losses = []
    for _ in range(steps):
        loss = task_loss(entry, _first_output(module(*inputs)), target)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(task_loss(entry, _first_output(module(*inputs)), target).item())
    return losses


__all__ = ["SEED", "ZOO", "ZooModel", "check_gradients", "check_parity", "check_training", "get", "make_target",
           "parity_inputs", "register", "seeded_init_", "task_loss"]
