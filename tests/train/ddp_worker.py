"""One torchrun worker of test_distributed: trains the tiny CNN for a few steps, then writes
its final weights and the inputs it saw to OUT/rank<r>.* and leaves through clean_exit().

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py MODEL SPEC OUT
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from geta_onnx.bridge import to_torch
from geta_onnx.config import DataConfig
from geta_onnx.graph import load_model
from geta_onnx.train import distributed, load_data, make_loss, train


def main(model_path: str, spec: str, out: str) -> None:
    out = Path(out)
    model = load_model(model_path)
    module = to_torch(model)
    data = load_data(spec, DataConfig(batch_size=8, val_split=0.25), model=model, seed=0)
    loss = make_loss("auto", has_labels=True, module=module)
    seen = []

    def recording_loss(outputs, target, inputs):  # which samples this rank trained on (not eval, not DDP's probe)
        if torch.is_grad_enabled() and module.training:
            seen.append(round(float(inputs[0].sum()), 3))
        return loss(outputs, target, inputs)

    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    result = train(module, data, opt, loss_fn=recording_loss, steps=6, checkpoint_dir=out / "ck", progress=False)
    rank = distributed.info().rank
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "steps": result.steps,
                                                       "world": distributed.info().world_size,
                                                       "metrics": result.metrics}))
    distributed.clean_exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
