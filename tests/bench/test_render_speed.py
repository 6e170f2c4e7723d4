"""The report says "slower" when the compressed model is slower (4 of 13 third-party files
were, docs/realworld.md): never "0.63x faster"."""
from geta_onnx.bench.render import render_markdown
from geta_onnx.bench.report import build_report


def test_slower_is_called_slower():
    report = build_report(latency_original={"1": 1.0, "32": 10.0}, latency_compressed={"1": 1.6, "32": 5.0},
                          fidelity=("agreement", 0.9))
    md = render_markdown(report)
    assert "**1.60x slower**" in md and "**2.00x faster**" in md
    assert "0.62x faster" not in md
