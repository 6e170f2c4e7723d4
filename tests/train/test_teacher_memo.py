"""The teacher memo: each sample through the teacher once, the same outputs as running it on
every batch, off by itself on augmented data, and carried through the checkpoint so a
resumed run is bit-identical."""
import numpy as np
import pytest
import torch

from geta_onnx.bridge import to_torch
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.train import Schedule, load_data, make_loss, train
from geta_onnx.train.checkpoint import load as load_checkpoint
from geta_onnx.train.checkpoint import save as save_checkpoint
from geta_onnx.train.teacher import OrtTeacher
from geta_onnx.train.teacher_memo import TeacherMemo
from samples.zoo import get
from tests.train.models import blobs, bridged, cnn_model, eval_bn_model
from tests.train.test_loop import StopAt
from tests.zoo_cache import zoo_path


class Counted:
    """A teacher whose calls are counted: rowwise outputs (a tensor and a tuple form)."""

    def __init__(self, two_outputs=False):
        self.calls, self.two = 0, two_outputs

    def __call__(self, x, ids):
        self.calls += 1
        logits = x.flatten(1)[:, :3] * 2.0 + ids[:, :1].float()
        return (logits, x.sum((2, 3))) if self.two else logits


def _batches(n=40, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, ids = torch.randn(n, 2, 3, 3, generator=g), torch.randint(0, 9, (n, 4), generator=g)
    return xs, ids, [torch.arange(i, min(i + batch, n)) for i in range(0, n, batch)]


def _same(a, b):
    a, b = (v if isinstance(v, tuple) else (v,) for v in (a, b))
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("two", [False, True])
def test_each_sample_runs_the_teacher_once_and_later_epochs_read_the_same_outputs(two):
    xs, ids, order = _batches()
    teacher, memo = Counted(two), TeacherMemo(capacity=40)
    for epoch in range(3):
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(epoch))  # another batch order each epoch
        for rows in (perm[i:i + 8] for i in range(0, 40, 8)):
            got = memo(teacher, (xs[rows], ids[rows]))
            assert _same(got, Counted(two)(xs[rows], ids[rows]))
        assert teacher.calls == 6  # epoch 0's five batches and the row check (half a batch); none after
    assert memo.summary() == {"hits": 80, "misses": 40, "samples": 40, "megabytes": 0.0}
    assert memo.off is None


def test_augmented_data_turns_the_memo_off_and_every_batch_runs_the_teacher():
    teacher, memo = Counted(), TeacherMemo(capacity=24)
    for step in range(6):  # 48 distinct samples for a data set of 24: augmented
        g = torch.Generator().manual_seed(step)
        x, ids = torch.randn(8, 2, 3, 3, generator=g), torch.randint(0, 9, (8, 4), generator=g)
        assert _same(memo(teacher, (x, ids)), Counted()(x, ids))
    assert teacher.calls == 7 and "augmented" in memo.off  # 6 batches and the row check and memo.summary()["samples"] == 0


def test_a_partly_remembered_batch_runs_the_teacher_and_remembers_only_its_new_rows():
    xs, ids, _ = _batches()
    teacher, memo = Counted(), TeacherMemo(capacity=40)
    memo(teacher, (xs[:8], ids[:8]))
    rows = torch.tensor([0, 1, 20, 21, 21])  # two known, a new sample twice
    assert _same(memo(teacher, (xs[rows], ids[rows])), Counted()(xs[rows], ids[rows]))
    assert teacher.calls == 3 and memo.summary()["samples"] == 10  # 2 batches and the first one's row check
    memo(teacher, (xs[[20, 21, 3]], ids[[20, 21, 3]]))
    assert teacher.calls == 3  # all three remembered now


def test_outputs_past_the_byte_cap_or_without_a_batch_axis_turn_it_off():
    xs, ids, _ = _batches()
    big = TeacherMemo(capacity=40, max_bytes=40 * 3 * 4 - 1)  # one row short of the data's logits
    big(Counted(), (xs[:8], ids[:8]))
    assert "data's 40 samples" in big.off and big.summary()["samples"] == 0
    fits = TeacherMemo(capacity=40, max_bytes=40 * 3 * 4)
    fits(Counted(), (xs[:8], ids[:8]))
    assert fits.off is None and fits.summary()["samples"] == 8
    pooled = TeacherMemo(capacity=40)
    out = pooled(lambda x, i: x.mean(), (xs[:8], ids[:8]))  # a scalar: no row per sample
    assert out.dim() == 0 and "axis 0" in pooled.off
    mixed = TeacherMemo(capacity=40)
    mixed(lambda x, i: x.flatten(1) - x.mean(0).flatten(), (xs[:8], ids[:8]))  # rows read the batch's mean
    assert "rest of its batch" in mixed.off
    shaped = TeacherMemo(capacity=40)
    shaped(lambda x, i: x[:, :, :2].flatten(1), (xs[:8], ids[:8]))
    shaped(lambda x, i: x.flatten(1), (xs[8:16], ids[8:16]))  # the row shape changes: not remembered
    assert "shape changes" in shaped.off


def test_the_memo_round_trips_through_a_checkpoint_without_pickle(tmp_path):
    xs, ids, order = _batches()
    teacher, memo = Counted(True), TeacherMemo(capacity=40)
    for rows in order[:3]:
        memo(teacher, (xs[rows], ids[rows]))
    save_checkpoint(tmp_path / "ck.safetensors", {"teacher_memo": memo.state_dict()})
    again = TeacherMemo(capacity=40)
    again.load_state_dict(load_checkpoint(tmp_path / "ck.safetensors")["teacher_memo"])
    fresh = Counted(True)
    for rows in order[:3]:
        assert _same(again(fresh, (xs[rows], ids[rows])), Counted(True)(xs[rows], ids[rows]))
    assert fresh.calls == 0 and again.summary()["samples"] == 24


def test_onnxruntime_rows_do_not_depend_on_the_rest_of_the_batch():
    """What makes the memo exact: a row's teacher output has the same bits in any batch."""
    for name in ("resnet", "bert", "lstm"):
        model = load_model(zoo_path(name, "legacy"))
        module = to_torch(model)
        teacher = OrtTeacher(model, module.input_names, module.output_names)
        inputs = tuple(get(name).example_inputs(24, seed=3).values())
        whole = teacher(*inputs)
        for lo, hi in ((0, 7), (7, 24), (11, 13)):
            part = teacher(*(x[lo:hi] for x in inputs))
            assert _same(part, tuple(w[lo:hi] for w in whole) if isinstance(whole, tuple) else whole[lo:hi]), name


def _run(path, spec, ck=None, *, memo=True, hooks=(), resume=False):
    model, module = bridged(path)
    data = load_data(spec, DataConfig(batch_size=16, val_split=0.25), model=model, seed=0)
    loss = make_loss("task+kd", has_labels=True, module=module, model=model,
                     memo_samples=data.n_train + data.n_eval if memo else None)
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    result = train(module, data, opt, loss_fn=loss, schedule=Schedule.plain(15, len(data.train)), hooks=list(hooks),
                   checkpoint_dir=ck, resume=resume, progress=False, seed=7)
    return module, loss, result


@pytest.fixture
def blob_spec(tmp_path):
    x, y = blobs(96)
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    return f"npz:{tmp_path / 'blobs.npz'}"


def test_training_with_the_memo_equals_training_without_and_resumes_bit_identical(blob_spec, tmp_path):
    cnn_path, spec = eval_bn_model(tmp_path), blob_spec  # BatchNorm on running statistics: rows stand alone
    plain, plain_loss, _ = _run(cnn_path, spec, memo=False)
    straight, loss, res = _run(cnn_path, spec, tmp_path / "a")
    assert isinstance(loss.teacher, OrtTeacher) and plain_loss.memo is None
    # 3 epochs of 72 training samples + 3 evaluations of 24: each sample through the teacher once
    assert loss.memo.summary()["misses"] == 96 and loss.memo.summary()["hits"] == 2 * 96
    with pytest.raises(KeyboardInterrupt):  # killed at the start of epoch 2, after epoch 1's checkpoint
        _run(cnn_path, spec, tmp_path / "b", hooks=[StopAt(5)])
    resumed, loss_b, res_b = _run(cnn_path, spec, tmp_path / "b", resume=True)
    assert res_b.resumed_at == 5 and loss_b.memo.misses == 96  # read back: the resumed epochs ran no teacher
    for k, v in plain.state_dict().items():
        assert torch.equal(v, straight.state_dict()[k]) and torch.equal(v, resumed.state_dict()[k]), k
    assert [h["eval"] for h in res.history] == [h["eval"] for h in res_b.history]


def test_a_teacher_whose_rows_read_the_batch_keeps_running_on_every_batch(blob_spec, tmp_path):
    """BatchNorm in training mode normalises with the batch's statistics: nothing to remember."""
    path = cnn_model(tmp_path)
    plain, _, _ = _run(path, blob_spec, memo=False)
    module, loss, _ = _run(path, blob_spec)
    assert "rest of its batch" in loss.memo.off and loss.memo.hits == 0
    for k, v in plain.state_dict().items():
        assert torch.equal(v, module.state_dict()[k]), k
