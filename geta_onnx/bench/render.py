"""render_markdown: the compression report (bench/report.py schema, as compress writes it)
as a Markdown page for people: the headline table, fused ops, per-layer table, plots,
versions and the wall time."""
from __future__ import annotations

from pathlib import Path


def render_markdown(report: dict, plots=None) -> str:
    """`plots`: an object with `layers_png` / `summary_png` paths to link (None: no plots)."""
    model = report.get("model", {})
    lines = ["# geta-onnx compression report", ""]
    if model:
        lines += [f"`{model.get('original')}` → `{model.get('compressed')}` (profile `{report.get('profile', '?')}`, "
                  f"onnxruntime, {report.get('threads', '?')} thread(s))", ""]
    lines += ["| | original | compressed | change |", "|---|---:|---:|---:|"]
    lines += _quality_rows(report)
    for b, ratio in report["speedup"].items():
        o, c = report["latency_ms"]["original"][b], report["latency_ms"]["compressed"][b]
        change = f"**{ratio:.2f}x faster**" if ratio >= 1 else f"**{1 / ratio:.2f}x slower**"
        lines.append(f"| latency, batch {b} (p50 ms) | {o:.3f} | {c:.3f} | {change} |")
    for key, label, fmt in (("macs", "MACs per sample", _millions), ("size_bytes", "file size", _megabytes)):
        if key in report:
            o, c = report[key]["original"], report[key]["compressed"]
            lines.append(f"| {label} | {fmt(o)} | {fmt(c)} | {c / o:.1%} of the original |" if o else
                         f"| {label} | {fmt(o)} | {fmt(c)} | |")
    if "relative_bops" in report:
        target = f" (target {report['target_bops']})" if report.get("target_bops") else ""
        lines.append(f"| relative BOPs | 1 | {report['relative_bops']:.4f}{target} | |")
    if "groups" in report:
        g = report["groups"]
        share = f"{g['removed']} of {g['prunable']} ({report['group_sparsity']:.1%})"
        if g.get("planned") is not None and g["planned"] != g.get("target"):
            share += f"; budget {g['target']}, {g['planned']} with kept widths on the group unit"
        lines.append(f"| pruning groups removed | | {share} | |")
    lines.append("")
    lines += _latency_model_lines(report.get("latency_model"))
    lines += _guard_lines(report.get("guard"))
    lines += _precision_lines(report.get("precision"))
    lines += _fusion_lines(report.get("fused_ops"))
    if report.get("layers"):
        lines += _layer_table(report["layers"])
    if report.get("tables"):  # quant/tables.py
        lines += ["Embedding tables in int8 (one step per column): " + ", ".join(
            f"`{t['name']}` ({t['rows']:,} rows, {t['kept']} of {t['total']} columns kept)"
            for t in report["tables"]) + ".", ""]
    if report.get("recurrent"):  # quant/recurrent.py
        lines += ["LSTM weights in int8 (one step per direction, DynamicQuantizeLSTM): " + ", ".join(
            f"`{r['node']}` ({r['parameters']:,} weights)" for r in report["recurrent"]) + ".", ""]
    if plots is not None:
        lines += ["## Plots", "", f"![kept channels and bits per layer]({Path(plots.layers_png).name})", "",
                  f"![quality and latency before and after]({Path(plots.summary_png).name})", ""]
    lines += _footer(report)
    return "\n".join(lines) + "\n"


def _quality_rows(report: dict) -> list[str]:
    rows = []
    split = report.get("quality_split", {})
    where = f" ({split['split']} split, {split['samples']} samples)" if split else ""
    if "accuracy" in report:
        o, c = report["accuracy"]["original"], report["accuracy"]["compressed"]
        rows.append(f"| top-1 accuracy{where} | {o:.2%} | {c:.2%} | {100 * (c - o):+.2f} points |")
    if "fidelity" in report:
        f = report["fidelity"]
        rows.append(f"| {f['metric']} with the original{where} | 1 | {f['value']:.4f} | |")
    return rows


def _precision_lines(precision: dict | None) -> list[str]:
    """Which export ships (int8 QDQ or the float twin), why, and each one's timing."""
    if not precision:
        return []
    timed = "; ".join(f"{name} " + ", ".join(f"{v:.2f}x at batch {b}" for b, v in c["speedup"].items())
                      + f", {c['size_bytes'] / 1e6:.3f} MB"
                      for name, c in precision["candidates"].items())
    lines = [f"Shipped: **{precision['shipped']}** ({precision['why']}). Timed: {timed}.", ""]
    if precision.get("weight_grid") and precision["shipped"] == "int8":
        lines += [f"Weights: {precision['weight_grid']}.", ""]
    if precision.get("scored_unfused"):
        lines += [f"Scored: {precision['scored_unfused']}.", ""]
    if "qdq_math_quality" in precision:  # int8 scored below its twin: scored again without fused kernels
        int8 = precision["candidates"]["int8"]
        lines += [f"int8 scored {int8['quality']:.4f} ({int8['metric']}) in this CPU's int8 kernels and "
                  f"{precision['qdq_math_quality']:.4f} as its own QDQ math (no fused kernels), against "
                  f"{precision['candidates']['float']['quality']:.4f} for its float twin (docs/realworld.md, "
                  "\"Never slower\").", ""]
    return lines


def _latency_model_lines(lat: dict | None) -> list[str]:
    """The latency budget and the latency model's prediction beside the measurement."""
    if not lat:
        return []
    target = (f"{lat['target_ms']:.3f} ms ({lat['target_speedup']:.2f}x the original)" if lat.get("target_speedup")
              else f"{lat['target_ms']:.3f} ms")
    relative = lat.get("error_relative", {})
    forms = "; ".join(f"{k} predicted {v:.3f} ms, measured {lat['measured_ms'][k]:.3f} ms ({lat['error'][k]:+.1%}"
                      + (f"; {relative[k]:+.1%} as shares of the original" if k in relative else "") + ")"
                      for k, v in lat["predicted_ms"].items() if lat["measured_ms"].get(k) and k in lat["error"])
    lines = [f"Latency budget at batch {lat['batch']}, {lat['threads']} thread(s): {target}. {forms}."]
    fit = (lat.get("fit") or {}).get("int8")
    if fit:
        where = "onnxruntime's profile" if fit["rest_from"] == "profile" else "a difference of whole-model timings"
        lines.append(f"The latency model's unpruned int8 model: {fit['layers_ms']:.3f} ms in the layers, "
                     f"{fit['fixed_ms']:.3f} ms fixed, {fit['shrinking_ms']:.3f} ms shrinking with the pruned "
                     f"channels (the rest from {where}).")
    if lat.get("int8_only"):
        lines.append(f"Kept from 4-bit weights, their MatMulNBits timed slower than int8: "
                     f"{', '.join(f'`{n}`' for n in lat['int8_only'])}.")
    lines += _float_check_lines(lat.get("float_check"))
    return lines + [""]


def _float_check_lines(check: dict | None) -> list[str]:
    """Where the layers one-layer times call slower in int8 run, and why (latency.chain)."""
    if not check or not check.get("layers"):
        return []
    names = ", ".join(f"`{n}` ({why})" for n, why in check["layers"].items())
    return [f"Timed slower in int8 alone: {names}; kept in {check['kept']}: {check['why']}."]


def _guard_lines(guard: dict | None) -> list[str]:
    """The quality guard's curve: one row per check (before pruning, then each period's
    commit), with the predicted speedup under a latency budget (docs/guard.md)."""
    if not guard:
        return []
    speed = any("predicted_speedup" in c for c in guard["checks"])
    lines = ["## Quality guard", "",
             f"{guard['metric']} on {_guard_samples(guard)}; original {guard['baseline']:.4f}, tolerance "
             f"{guard['tolerance']:g}. {guard.get('why') or _guard_end(guard)}.", "",
             *([f"**Warning:** {guard['fitted']['note']}.", ""] if guard.get("fitted") else []),
             *_guard_float_lines(guard.get("float_fallback"), guard["baseline"]),
             "| check | groups removed | share | " + ("predicted speedup | " if speed else "")
             + "quality | drop | action |",
             "|---|---:|---:|" + ("---:|" if speed else "") + "---:|---:|---|"]
    for c in guard["checks"]:
        where = "before pruning" if c["period"] < 0 else f"period {c['period'] + 1}"
        if c.get("probe"):  # the cool-down probe: the budget's structure after some cool-down steps
            where = f"cool-down probe, step {c['step']}"
        if "drop_at_commit" in c:  # a retry's second check
            where += f", {c['recovery_steps']} steps later"
        share = f"{c['sparsity']:.1%}" if "sparsity" in c else ""
        x = f"{c['predicted_speedup']:.2f}x | " if "predicted_speedup" in c else ("| " if speed else "")
        lines.append(f"| {where} | {c['removed']} | {share} | {x}{c['quality']:.4f} | {c['drop']:+.4f} | "
                     f"{c['action']} |")
    end, gap = guard.get("end"), "| | | " + ("| " if speed else "")  # gap: the empty cells before quality
    if end:  # the end check (after the cool-down), and the fallback when it missed the tolerance
        lines.append(f"| end of training {gap}{end['quality']:.4f} | {end['drop']:+.4f} | {end['action']} |")
        if "quality_after" in end:
            at = "before pruning" if end["fallback_period"] < 0 else f"after period {end['fallback_period'] + 1}"
            lines.append(f"| fallback: the state {at} {gap}{end['quality_after']:.4f} | {end['drop_after']:+.4f} | "
                         f"{'' if 'float_layers' in end else 'shipped'} |")
        if "float_layers" in end:  # still over it: layers to float in the trained model (no training again)
            names = ", ".join(f"`{la['node']}`" for la in end["float_layers"])
            lines.append(f"| {len(end['float_layers'])} layer(s) to float after training {gap}{end['quality_float']:.4f} | "
                         f"{end['drop_float']:+.4f} | shipped: {names} |")
    ex = guard.get("exported")
    if ex:  # the file's check: the whole eval split in onnxruntime (compress._guarded_file)
        lines.append(f"| exported file, {ex['samples']} {ex['split']} samples in onnxruntime {gap}| {ex['drop']:+.4f} | "
                     f"{ex['action']} |")
        if ex.get("drop_fallback") is not None:
            lines.append(f"| exported file of the last state within the tolerance {gap}| {ex['drop_fallback']:+.4f} | |")
        unseen = ex.get("unseen")
        if unseen:  # the split after the checks' samples: no decision of the run read them (compress._unseen_check)
            within = "within" if unseen["drop"] <= guard["tolerance"] else "over"
            lines.append(f"| shipped file, the {unseen['samples']} held-out samples no check scored {gap}| "
                         f"{unseen['drop']:+.4f} | {within} the tolerance |")
    return lines + ["", *_guard_cost_lines(guard), ""]


def _guard_cost_lines(guard: dict) -> list[str]:
    """What the guard added to the training time (reports from before it was recorded: nothing)."""
    cost, floated = guard.get("cost"), guard.get("float_fallback") or {}
    if not cost:
        return []
    line = f"Guard cost: {cost['checks']} checks, {cost['check_seconds']:.0f} s"
    if "attempt_seconds" in floated:  # the attempt before the float fallback, then its search
        line += (f"; the attempt before the float fallback ran {floated['attempt_seconds']:.0f} s (its float "
                 f"search {floated['search_seconds']:.0f} s of it), and its steps were trained again")
    return [line + "."]


def _guard_samples(guard: dict) -> str:
    """What the guard's checks scored, in words."""
    if guard.get("held_out") == "train":  # [prune] guard_data = "train"
        return (f"{guard.get('samples', 'the')} training samples held out for the guard (never trained on; no "
                "check read the eval split)")
    if guard.get("held_out") == "val":  # [prune] guard_data = "val" (or "auto" with a validation split)
        return f"{guard.get('samples', 'the')} samples of the validation split (no check read the eval split)"
    return f"{guard['samples']} samples of the held-out batches" if guard.get("samples") else "held-out batches"


def _guard_float_lines(fallback: dict | None, baseline: float) -> list[str]:
    """The layers the guard put back in float before pruning, in the order their quantization's
    cost ranked them, each with the quality once it and the ones before it were in float."""
    if not fallback:
        return []
    named = ", ".join(f"`{la['node']}` ({la['quality_cumulative']:.4f} with it and those before it in float)"
                      for la in fallback["layers"])
    return [f"The quantized model missed the tolerance before pruning ({fallback['quality']:.4f}, drop "
            f"{baseline - fallback['quality']:+.4f}): {len(fallback['layers'])} layer(s) went back to float, those "
            f"whose quantization cost the most, and training started over: {named}.", ""]


def _guard_end(guard: dict) -> str:
    """Why pruning ended, for reports written before the guard recorded it."""
    return (f"pruning stopped after period {guard['stopped_at_period']}" if guard.get("stopped_at_period") is not None
            else "every period met it")


def _fusion_lines(fusion: dict | None) -> list[str]:
    if not fusion:
        return []
    fused = ", ".join(f"{op} {n}" for op, n in fusion["fused"].items()) or "none"
    left = ", ".join(f"{op} {n}" for op, n in fusion["float"].items()) or "none"
    lines = [f"onnxruntime integer kernels: {fused}; weighted ops left in float: {left}."]
    if fusion.get("float_nodes"):
        names = ", ".join(f"`{n}`" for n in fusion["float_nodes"][:12])
        more = f" and {len(fusion['float_nodes']) - 12} more" if len(fusion["float_nodes"]) > 12 else ""
        lines.append(f"Float weighted ops: {names}{more}.")
    return lines + [""]


def _layer_table(layers: list[dict]) -> list[str]:
    lines = ["## Layers", "", "| layer | op | channels kept | weight bits | activation bits | MACs kept |",
             "|---|---|---:|---:|---:|---:|"]
    for la in layers:
        macs = f"{la['kept_macs'] / la['macs']:.0%}" if la.get("macs") else "?"
        wbits = _bits(la["weight_bits"]) + (f" ({la['float_reason']})" if la.get("float_reason") else "")
        lines.append(f"| `{la['name']}` | {la['op_type']} | {la['kept']} / {la['total']} | {wbits} "
                     f"| {_bits(la['act_bits'])} | {macs} |")
    return lines + [""]


def _footer(report: dict) -> list[str]:
    lines = []
    if "wall_time_s" in report:
        w = report["wall_time_s"]
        lines.append("Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in w.items()) + ".")
    if report.get("batch", "dynamic batch") != "dynamic batch":
        lines.append(f"Batch: {report['batch']}.")
    for line in report.get("branches", []):  # If nodes decided before training (graph/branches.py)
        lines.append(f"Specialised: {line}.")
    for line in report.get("interface", []):  # inputs adapted for training (graph/interface.py)
        lines.append(f"Interface: {line}.")
    t = report.get("training", {})
    if "processes" in t:
        where = f"{t['processes']} data-parallel processes" if t["processes"] > 1 else "1 process"
        teacher = f", distilled from the original run in {t['teacher']}" if t.get("teacher") else ""
        memo = t.get("teacher_memo")
        if memo and not memo.get("off"):
            teacher += (f" ({memo['misses']:,} samples through the teacher, {memo['hits']:,} from its remembered "
                        "outputs)")
        elif memo:
            teacher += f" (its outputs not remembered: {memo['off']})"
        lines.append(f"Trained {t['steps']} steps on {t.get('device', 'cpu')}, {where}{teacher}.")
    if "versions" in report:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".")
    if "bops_convention" in report:
        lines.append(f"BOPs: {report['bops_convention']}.")
    return lines


def _bits(b) -> str:
    return "float" if b is None else f"{b:g}"


def _millions(n) -> str:
    return f"{n / 1e6:.2f} M"


def _megabytes(n) -> str:
    return f"{n / 1e6:.3f} MB"
