"""Losses: cross-entropy as torch computes it, distillation that vanishes when student == teacher."""
import copy

import pytest
import torch
import torch.nn.functional as F

from geta_onnx.errors import ConfigError, DataError
from geta_onnx.train.losses import Loss, kl_distill, make_loss, task_loss

G = torch.Generator().manual_seed(0)


def test_cross_entropy_matches_torch_for_rows_and_maps():
    logits, labels = torch.randn(6, 4, generator=G), torch.randint(0, 4, (6,), generator=G)
    assert torch.allclose(task_loss(logits, labels), F.cross_entropy(logits, labels))
    seg, seg_labels = torch.randn(2, 4, 3, 5, generator=G), torch.randint(0, 4, (2, 3, 5), generator=G)
    assert torch.allclose(task_loss(seg, seg_labels), F.cross_entropy(seg, seg_labels))
    target = torch.randn(6, 4, generator=G)  # float targets: regression
    assert torch.allclose(task_loss(logits, target), F.mse_loss(logits, target))
    with pytest.raises(DataError, match=r"logits of shape \(N, C, ...\)"):
        task_loss(torch.randn(6), labels)
    with pytest.raises(DataError, match="labels run from 0 to 9 but the model output has 4 classes"):
        Loss("task")(logits, torch.tensor([0, 9, 1, 1, 2, 3]), (logits,))


def test_kl_is_zero_for_equal_logits_and_matches_formula():
    s, t = torch.randn(5, 7, generator=G), torch.randn(5, 7, generator=G)
    assert kl_distill(s, s.clone(), 2.0).abs() < 1e-6
    T = 3.0
    p = F.softmax(t / T, -1)
    want = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(kl_distill(s, t, T), want, atol=1e-6)
    maps = torch.randn(2, 7, 3, generator=G)  # (N, C, L): one distribution per position
    rows = maps.movedim(1, -1).reshape(-1, 7)
    assert torch.allclose(kl_distill(maps, maps * 2, T), kl_distill(rows, rows * 2, T))


def test_auto_mode_picks_task_kd_with_labels_and_kd_without():
    net = torch.nn.Linear(4, 3)
    assert make_loss("auto", has_labels=True, module=net).mode == "task+kd"
    kd = make_loss("auto", has_labels=False, module=net)
    assert kd.mode == "kd" and kd.teacher is not net and not any(p.requires_grad for p in kd.teacher.parameters())
    x = (torch.randn(8, 4, generator=G),)
    assert kd(net(*x), None, x).abs() < 1e-6 and kd.kd == "kl"  # (N, C) output: KL
    with pytest.raises(ConfigError, match="needs labels"):
        make_loss("task+kd", has_labels=False, module=net)
    with pytest.raises(DataError, match="needs labels"):
        make_loss("task", has_labels=True, module=net)(net(*x), None, x)


def test_embeddings_use_mse_and_probabilities_use_their_log():
    emb = torch.nn.Linear(4, 6)
    loss = make_loss("kd", has_labels=False, module=emb)
    x = (torch.randn(2, 5, 4, generator=G),)  # (N, T, D) output
    with torch.no_grad():
        emb.weight.add_(0.1)
    assert loss.kd == "auto"
    assert torch.allclose(loss(emb(*x), None, x), F.mse_loss(emb(*x), loss.teacher(*x)))
    assert loss.kd == "mse"
    soft = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(-1))
    kd = make_loss("kd", has_labels=False, module=soft)
    xs = (torch.randn(8, 4, generator=G),)
    with torch.no_grad():
        soft[0].bias.add_(torch.tensor([1.0, 0.0, -1.0]))
    want = kl_distill(soft(*xs).log(), kd.teacher(*xs).log(), 2.0)
    assert torch.allclose(kd(soft(*xs), None, xs), want) and kd._probs[0] is True


def test_combined_weights_and_output_selection():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x), self.b(x)

    net = Two()
    teacher = copy.deepcopy(net)
    with torch.no_grad():
        net.b.weight.mul_(-1)
    x, y = (torch.randn(8, 4, generator=G),), torch.randint(0, 3, (8,), generator=G)
    loss = Loss("task+kd", teacher=teacher, alpha=0.25, output=1, temperature=1.0)
    out_b, teach_b = net(*x)[1], teacher(*x)[1]
    want = 0.25 * F.cross_entropy(out_b, y) + 0.75 * kl_distill(out_b, teach_b, 1.0)
    assert torch.allclose(loss(net(*x), y, x), want)
    with pytest.raises(ConfigError, match="2 outputs, index 5"):
        Loss("task", output=5)(net(*x), y, x)


def test_teacher_stays_frozen_while_the_student_trains():
    net = torch.nn.Linear(4, 3)
    loss = make_loss("task+kd", has_labels=True, module=net)
    before = copy.deepcopy(loss.teacher.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = (torch.randn(8, 4, generator=G),), torch.randint(0, 3, (8,), generator=G)
    for _ in range(3):
        opt.zero_grad()
        loss(net(*x), y, x).backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in loss.teacher.state_dict().items())
    assert not torch.equal(net.weight, loss.teacher.weight) and not loss.teacher.training


def test_distillation_reads_every_output_of_a_multi_output_model():
    """Label-free kd of a two-head model trains both heads (kd_outputs = all): each head's own
    kd kind (KL for the logits, MSE for the boxes, relative to the teacher's mean square); with
    kd_outputs = one only the chosen output is read, and the other head gets no gradient."""

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.cls, self.box = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3), torch.nn.Linear(6, 4)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.cls(h), 10 * self.box(h).reshape(-1, 2, 2)  # (N, 2 boxes, 2): not class rows

    torch.manual_seed(0)
    net = TwoHeads()
    x = (torch.randn(8, 4, generator=G),)
    every = make_loss("kd", has_labels=False, module=net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s, t = net(*x), every.teacher(*x)
    want = (kl_distill(s[0], t[0], 2.0) + F.mse_loss(s[1], t[1]) / t[1].pow(2).mean()) / 2
    got = every(s, None, x)
    assert torch.allclose(got, want) and every._kinds == {0: "kl", 1: "mse"}
    got.backward()
    assert net.box.weight.grad is not None and net.box.weight.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)
    one = make_loss("kd", has_labels=False, module=net, every_output=False)
    one(net(*x), None, x).backward()
    assert net.box.weight.grad is None and net.cls.weight.grad is not None
