"""The training loop on a tiny bridged ONNX model: learning, hooks, exact resume, errors."""
import numpy as np
import pytest
import torch

from geta_onnx.config import DataConfig, ScheduleConfig
from geta_onnx.errors import ConfigError, DataError, GetaError
from geta_onnx.train import CHECKPOINT, Schedule, load_data, lr_scheduler, make_loss, train
from tests.train.models import blobs, bridged


@pytest.fixture
def blob_spec(tmp_path):
    x, y = blobs(96)
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    return f"npz:{tmp_path / 'blobs.npz'}"


class Recorder:
    """A hook with state: counts steps and reports a made-up 'sparsity' field."""

    def __init__(self):
        self.seen, self.before, self.count = [], [], 0

    def before_step(self, step):
        self.before.append(step)

    def after_step(self, step, loss):
        self.seen.append(step)
        self.count += 1
        return {"sparsity": self.count / 100}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class StopAt:
    """Simulates an interrupted run: raises before global step `step`."""

    def __init__(self, step):
        self.step = step

    def before_step(self, step):
        if step == self.step:
            raise KeyboardInterrupt


def _setup(cnn_path, spec, *, seed=0):
    model, module = bridged(cnn_path)
    data = load_data(spec, DataConfig(batch_size=16, val_split=0.25), model=model, seed=seed)
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    return module, data, opt, make_loss("auto", has_labels=True, module=module)


def test_learns_evaluates_checkpoints_and_calls_hooks(cnn_path, blob_spec, tmp_path):
    module, data, opt, loss = _setup(cnn_path, blob_spec)
    rec = Recorder()
    assert len(data.train) == 5  # 72 training samples (24 held out), batches of 16
    sched = Schedule.plain(30, len(data.train))
    result = train(module, data, opt, loss_fn=loss, schedule=sched, hooks=rec, checkpoint_dir=tmp_path / "ck",
                   progress=False)
    assert (result.steps, result.epochs, len(result.history)) == (30, 6, 6)
    assert rec.seen == rec.before == list(range(30))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["accuracy"] >= 0.8 and result.checkpoint == tmp_path / "ck" / CHECKPOINT
    assert not module.training  # left in eval mode by the last evaluation


def _run(cnn_path, spec, ck, *, hooks=(), resume=False):
    module, data, opt, loss = _setup(cnn_path, spec)
    sched = Schedule.from_config(len(data.train), ScheduleConfig(epochs=3, pruning_periods=2, projection_periods=2))
    lrs = lr_scheduler(opt, "cosine", sched.total_steps, warmup_steps=2)
    rec = Recorder()
    result = train(module, data, opt, loss_fn=loss, schedule=sched, lr_scheduler=lrs, hooks=[rec, *hooks],
                   checkpoint_dir=ck, resume=resume, progress=False, seed=7)
    return module, opt, rec, result


def test_resume_after_an_interruption_is_bit_identical(cnn_path, blob_spec, tmp_path):
    straight, opt_a, rec_a, res_a = _run(cnn_path, blob_spec, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):  # killed at the start of epoch 2, after epoch 1's checkpoint
        _run(cnn_path, blob_spec, tmp_path / "b", hooks=[StopAt(5)])
    resumed, opt_b, rec_b, res_b = _run(cnn_path, blob_spec, tmp_path / "b", resume=True)
    assert res_b.resumed_at == 5 and rec_b.seen == list(range(5, 15)) and rec_b.count == rec_a.count == 15
    a, b = straight.state_dict(), resumed.state_dict()
    assert list(a) == list(b) and "state.bn_running_mean" in a
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
    assert [h["eval"] for h in res_a.history] == [h["eval"] for h in res_b.history]
    # checkpointing changes nothing, and training did move the weights
    plain, *_ = _run(cnn_path, blob_spec, None)
    assert torch.equal(plain.state_dict()["params.fc_weight"], a["params.fc_weight"])
    assert not torch.equal(bridged(cnn_path)[1].state_dict()["params.fc_weight"], a["params.fc_weight"])


def test_resume_of_a_finished_run_does_nothing_and_a_foreign_checkpoint_is_refused(cnn_path, token_path, blob_spec,
                                                                                   tmp_path):
    module, data, opt, loss = _setup(cnn_path, blob_spec)
    train(module, data, opt, loss_fn=loss, steps=8, checkpoint_dir=tmp_path, progress=False)
    module2, data2, opt2, loss2 = _setup(cnn_path, blob_spec)
    again = train(module2, data2, opt2, loss_fn=loss2, steps=8, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert again.resumed_at == 8 and again.steps == 8 and again.epochs == 2  # 5 + 3 steps
    assert torch.equal(module2.state_dict()["params.fc_weight"], module.state_dict()["params.fc_weight"])
    _, tokens = bridged(token_path)
    with pytest.raises(DataError, match="different model or optimizer"):
        train(tokens, data, torch.optim.SGD(tokens.parameters(), 0.1), loss_fn=loss, steps=8, checkpoint_dir=tmp_path,
              resume=True, progress=False)


def test_distillation_without_labels_on_token_ids(token_path, tmp_path):
    ids = np.random.default_rng(0).integers(0, 11, (64, 5))
    np.savez(tmp_path / "ids.npz", x=ids)
    model, student = bridged(token_path)
    data = load_data(f"npz:{tmp_path / 'ids.npz'}", DataConfig(batch_size=16), model=model)
    loss = make_loss("auto", has_labels=data.has_labels, module=student)  # the teacher: a frozen copy, taken now
    with torch.no_grad():
        student.get_parameter("params.proj_bias").add_(1.0)  # start away from the teacher
    before = train(student, data, torch.optim.SGD(student.parameters(), lr=0.0), loss_fn=loss, steps=1,
                   progress=False).metrics["loss"]
    after = train(student, data, torch.optim.Adam(student.parameters(), lr=0.05), loss_fn=loss, steps=40,
                  progress=False).metrics["loss"]
    assert loss.kd == "mse" and before > 0.5 and after < 0.2 * before


def test_bad_settings_fail_clearly(cnn_path, blob_spec):
    module, data, opt, loss = _setup(cnn_path, blob_spec)
    with pytest.raises(ConfigError, match="either a schedule or epochs"):
        train(module, data, opt, loss_fn=loss, schedule=Schedule.plain(5, 5), epochs=2, progress=False)
    with pytest.raises(ConfigError, match="'resume' needs a checkpoint directory"):
        train(module, data, opt, loss_fn=loss, steps=2, resume=True, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda'.*--device cpu"):
            train(module, data, opt, loss_fn=loss, steps=2, device="cuda", progress=False)
    with torch.no_grad():
        module.get_parameter("params.fc_bias").fill_(float("nan"))
    with pytest.raises(GetaError, match="loss became nan at step 0"):
        train(module, data, opt, loss_fn=loss, steps=2, progress=False)


def test_progress_bar_shows_rate_stage_and_hook_fields(cnn_path, blob_spec, capsys):
    module, data, opt, loss = _setup(cnn_path, blob_spec)
    sched = Schedule(total_steps=10, steps_per_epoch=len(data.train), warmup_steps=2, projection_steps=2,
                     projection_periods=2, pruning_start=4, pruning_steps=4, pruning_periods=2)
    train(module, data, opt, loss_fn=loss, schedule=sched, hooks=Recorder(), progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err and "step/s" in err and "stage=cooldown" in err and "sparsity=0.1" in err
    assert "acc=" in err and "eval_loss=" in err
    train(module, data, opt, loss_fn=loss, steps=2, progress=False)
    assert capsys.readouterr().err == ""


class Pruning(torch.optim.Adam):
    """An optimizer that reports a structural change (like QASSO's commit) after `at` steps."""

    def __init__(self, params, at):
        super().__init__(params, lr=0.02)
        self.at, self.steps = at, 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)

    @property
    def structure_version(self):
        return int(self.steps >= self.at)


def _running_mean(module):
    """The bridged TinyCNN's one BatchNorm running mean (a buffer of module.state)."""
    return next(b for n, b in module.named_buffers() if "mean" in n)


def _running_var(module):
    return next(b for n, b in module.named_buffers() if "var" in n)


def test_refreshed_batchnorm_is_a_copy_with_fresh_statistics(cnn_path, blob_spec):
    from geta_onnx.train.loop import refreshed_batchnorm

    module, data, _, _ = _setup(cnn_path, blob_spec)
    _running_mean(module).fill_(5.0)  # stale statistics
    rng = torch.get_rng_state()
    fresh = refreshed_batchnorm(module, data.train, module.input_names, "cpu", batches=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG stream is untouched
    assert float(_running_mean(module).min()) == 5.0 and module.training  # the original is untouched
    assert not fresh.training and float(_running_mean(fresh).abs().max()) < 5.0


@pytest.mark.parametrize("at,refreshed", [(1, True), (10_000, False)])
def test_evaluation_after_a_structural_change_uses_refreshed_statistics(tmp_path, blob_spec, at, refreshed):
    from geta_onnx.train.evaluate import evaluate
    from geta_onnx.train.data import set_epoch
    from geta_onnx.train.loop import refreshed_batchnorm
    from tests.train.models import eval_bn_model

    module, data, _, loss = _setup(eval_bn_model(tmp_path), blob_spec)
    opt = Pruning(module.parameters(), at)

    class Spoil:  # stale running statistics at the end of the epoch
        def after_step(self, step, loss):
            _running_var(module).fill_(100.0)

    result = train(module, data, opt, loss_fn=loss, epochs=1, hooks=[Spoil()], progress=False)
    names = module.input_names
    set_epoch(data.train, 1)  # the loop's refresh read the batches of the pass after epoch 0
    stale = evaluate(module, data.eval, loss, device=torch.device("cpu"), input_names=names)
    fresh = evaluate(refreshed_batchnorm(module, data.train, names, "cpu"), data.eval, loss,
                     device=torch.device("cpu"), input_names=names)
    assert stale["loss"] != fresh["loss"]
    assert result.metrics["loss"] == (fresh if refreshed else stale)["loss"]
