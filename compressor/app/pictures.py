"""Pictures of a quantized model, for people who would rather look than read a table.

* ``sqnr_bits.png``: per quantized activation, its SQNR against the FP32 model (bars, coloured by
  bit width) and its bit width; also the TensorBoard image ``Quantization/SQNR_and_bits``.
* ``activation_histograms.png`` / ``weight_histograms.png``: each tensor's histogram on a log
  scale with the chosen clipping thresholds drawn as red lines (activations: the calibrated range
  the clip method chose; weights: the range the weight quantizer represents, per tensor, or the
  widest channel's when per channel). The same tensors go to TensorBoard as histograms
  (``Activations/...``, ``Weights/...``), which cannot draw the thresholds; the PNGs do.

matplotlib's object API (``Figure`` + Agg canvas), not pyplot: no global figure state in the library.
"""

import io
import math

import numpy as np
import torch

from compressor.core.io import atomic_write

BIT_COLOURS = {2: "#d62728", 3: "#ff7f0e", 4: "#bcbd22", 5: "#17becf", 6: "#9467bd", 7: "#8c564b", 8: "#2ca02c"}
GRID_COLUMNS = 4


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save(fig, path, writer=None, tag=None):
    """The figure as a PNG at ``path`` (atomically) and, with ``writer``, as a TensorBoard image."""
    data = _png_bytes(fig)
    atomic_write(path, lambda tmp: open(tmp, "wb").write(data))
    if writer is not None and tag:
        from PIL import Image  # matplotlib's own dependency

        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        writer.add_image(tag, image, 0, dataformats="HWC")


def sqnr_figure(rows):
    """rows: (activation, bits, clip, range, SQNR dB) as ``post_train.sqnr_table`` returns them."""
    names = [r[0] for r in rows]
    bits = [int(r[1]) for r in rows]
    finite = [r[4] for r in rows if math.isfinite(r[4])]
    cap = (max(finite) + 10) if finite else 10
    sqnr = [r[4] if math.isfinite(r[4]) else cap for r in rows]
    fig = _figure(max(6, 0.45 * len(rows) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    ax.bar(x, sqnr, color=[BIT_COLOURS.get(b, "#7f7f7f") for b in bits])
    for i, r in enumerate(rows):
        if not math.isfinite(r[4]):
            ax.text(i, cap, "inf", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("SQNR vs FP32 (dB)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    twin = ax.twinx()
    twin.plot(x, bits, "k_", markersize=14, markeredgewidth=2)
    twin.set_ylabel("bits (black marks)")
    twin.set_ylim(0, max(bits + [8]) + 1)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=BIT_COLOURS.get(b, "#7f7f7f"), label=f"{b} bits") for b in sorted(set(bits))],
              fontsize=7, loc="lower left")
    ax.set_title("per-layer activation SQNR and bit width")
    fig.tight_layout()
    return fig


def pruning_sensitivity_figure(rows, kind):
    """rows: (parameter, sparsity, {'top1': ...}) of ``pruning.sensitivity``: one curve per weight."""
    fig = _figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    for name in dict.fromkeys(n for n, _, _ in rows):
        pts = [(level, r["top1"]) for n, level, r in rows if n == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
    ax.set_xlabel(f"{kind} sparsity of the one pruned weight")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return fig


def histogram_figure(entries, title):
    """entries: (name, tensor, (lo, hi) or None, bits); one small log-scale histogram each."""
    rows = max(1, math.ceil(len(entries) / GRID_COLUMNS))
    fig = _figure(3.2 * GRID_COLUMNS, 2.3 * rows + 0.6)
    for i, (name, tensor, limits, bits) in enumerate(entries):
        ax = fig.add_subplot(rows, GRID_COLUMNS, i + 1)
        values = tensor.detach().float().flatten().cpu().numpy()
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        # a near-constant tensor (a random-init MobileNet-V3 site spans 1e-9) has no room for 80 float32 bins
        bins = 80 if hi - lo > 1e-4 * max(abs(lo), abs(hi), 1e-30) else 1
        ax.hist(values, bins=bins, color="#1f77b4", log=True)
        if limits is not None:
            for v in limits:
                ax.axvline(v, color="red", linewidth=1)
        clipped = 0.0 if limits is None else float(np.mean((values < limits[0]) | (values > limits[1]))) * 100
        ax.set_title(f"{name} ({bits}b, {clipped:.2f} % clipped)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title + " (red: clipping thresholds)", fontsize=9)
    fig.tight_layout()
    return fig


def _represented_range(fq):
    """(lo, hi) a fake-quant module represents: (qmin - zp) * scale .. (qmax - zp) * scale, widest channel."""
    scale = fq.scale.detach().float().cpu()
    zp = fq.zero_point.detach().float().cpu()
    return float(((fq.qmin - zp) * scale).min()), float(((fq.qmax - zp) * scale).max())


@torch.no_grad()
def capture_fp32_activations(quantizer, gm, batch, device):
    """The FP32 input of each activation quantizer on ``batch`` (quantizers off, then back on)."""
    seen = {}
    hooks = [fq.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, i[0].detach().cpu()))
             for name, fq in quantizer.activation_quantizers.items()]
    try:
        quantizer.set_state(False, False)
        gm(batch.to(device))
    finally:
        for h in hooks:
            h.remove()
        quantizer.set_state(True, False)
    return seen


def post_train_pictures(run_dir, quantizer, gm, batch, sqnr_rows, device):
    """SQNR/bits chart, activation and weight histograms with thresholds: PNGs in the run folder, TensorBoard."""
    writer = run_dir.writer
    if sqnr_rows:
        save(sqnr_figure(sqnr_rows), run_dir.file("sqnr_bits.png"), writer, "Quantization/SQNR_and_bits")
    acts = capture_fp32_activations(quantizer, gm, batch, device)
    entries = []
    for name, x in acts.items():
        fq = quantizer.activation_quantizers[name]
        limits = quantizer.ranges.get(name) if hasattr(quantizer, "ranges") else None
        if limits is None and getattr(fq, "observed", True):
            limits = _represented_range(fq)
        entries.append((name, x, limits, fq.bits))
        if writer is not None:
            writer.add_histogram(f"Activations/{name}", x, 0)
    if entries:
        save(histogram_figure(entries, "FP32 activations on one calibration batch"),
             run_dir.file("activation_histograms.png"))
    entries = []
    for key, wq in quantizer.weight_quantizers.items():
        module_name, pname = key.rsplit(".", 1)
        if pname != "weight":
            continue
        w = getattr(gm.get_submodule(module_name).parametrizations, pname).original
        entries.append((module_name, w, _represented_range(wq) if getattr(wq, "observed", True) else None, wq.bits))
        if writer is not None:
            writer.add_histogram(f"Weights/{module_name}", w.detach().cpu(), 0)
    if entries:
        save(histogram_figure(entries, "FP32 weights"), run_dir.file("weight_histograms.png"))
