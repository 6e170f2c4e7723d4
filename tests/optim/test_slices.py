"""merge_slices: R's slices merged per (tensor, axis) read and write the same entries as the
per-group slices they replace."""
import torch

from geta_onnx.bridge import to_torch
from geta_onnx.graph import from_proto
from geta_onnx.optim.slices import group_views, merge_slices
from geta_onnx.qadg import analyze
from tests.qadg import models


def test_merged_slices_cover_the_same_entries_in_view_order():
    model = from_proto(models.resnet2()[0])
    module = to_torch(model)
    views = group_views(module, analyze(model).groups)
    picked = views[::2]  # groups of several layers, several per tensor
    merged = merge_slices(picked)
    parts = [s for v in picked for s in v.slices]
    assert len(merged) == len({(s.name, s.axis) for s in parts}) < len(parts)
    for m in merged:
        same = [s for s in parts if (s.name, s.axis) == (m.name, m.axis)]
        assert m.param is same[0].param
        assert torch.equal(m.index, torch.cat([s.index for s in same]))
        assert torch.equal(m.view(), torch.cat([s.view() for s in same], dim=m.axis))
