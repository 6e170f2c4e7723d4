"""Elementwise arithmetic and activations (placeholder: a few ops; the family is completed below)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import NodeContext
from ..registry import converter
from .base import Lambda


@converter("Add", versions=(7, 13, 14))
def convert_add(ctx: NodeContext):
    return Lambda(torch.add, "Add")


@converter("Relu", versions=(6, 13, 14))
def convert_relu(ctx: NodeContext):
    return Lambda(F.relu, "Relu")
