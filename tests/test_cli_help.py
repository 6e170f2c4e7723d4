"""The defaults the command-line help states are the ones a run without the option uses:
compared with the settings that `settings_from_options` builds from no options at all."""
import re

import pytest
from click.testing import CliRunner

from geta_onnx.cli import main
from geta_onnx.settings import Settings

# option -> (section, key) of the settings it sets
OPTIONS = {"--target-sparsity": ("prune", "target_sparsity"), "--weight-bits": ("quant", "weight_bits"),
           "--act-bits": ("quant", "act_bits"), "--group-divisible": ("prune", "group_divisible"),
           "--optimizer": ("optim", "optimizer"), "--lr": ("optim", "lr"), "--batch-size": ("data", "batch_size"),
           "--amp": ("train", "amp"), "--seed": ("train", "seed"), "--reduce-range": ("quant", "reduce_range")}
COMPRESS = {"--profile": ("export", "profile"), "--batch": ("export", "batches"), "--threads": ("export", "threads")}


def _stated(help_text: str, option: str) -> str:
    """The text after '(default ' in `option`'s help (click wraps lines: joined first)."""
    flat = re.sub(r"\s+", " ", help_text)
    block = flat.split(f" {option} ", 1)[1].split(" --", 1)[0]
    found = re.search(r"\(default ([^)]+)\)", block)
    assert found, f"{option}: no '(default ...)' in its help: {block}"
    return found.group(1)


@pytest.mark.parametrize("command, options", [("train", OPTIONS), ("compress", {**OPTIONS, **COMPRESS})])
def test_help_defaults_are_the_run_defaults(command, options):
    text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
    settings = Settings()
    for option, (section, key) in options.items():
        value = getattr(getattr(settings, section), key)
        want = f"{value[0]}:{value[1]}" if key.endswith("_bits") else (
            ",".join(map(str, value)) if isinstance(value, tuple) else str(value))
        assert _stated(text, option) == want, option
