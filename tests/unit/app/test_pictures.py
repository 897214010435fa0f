"""Pictures of a quantized model: SQNR/bits chart and histograms with the clipping thresholds drawn."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from compressor.app.pictures import histogram_figure, save, sqnr_figure
from compressor.training.run_dir import RunDirectory

PNG = b"\x89PNG\r\n\x1a\n"


def test_sqnr_chart_bars_and_bits(tmp_path):
    rows = [("input", 8, "NONE", "[0, 1]", 45.5), ("relu1", 4, "AVG", "[0, 3]", 18.25),
            ("fc", 8, "NONE", "[-5, 5]", math.inf)]
    fig = sqnr_figure(rows)
    ax, twin = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert heights == [45.5, 18.25, pytest.approx(55.5)]  # inf drawn at the largest finite + 10, labelled
    assert [t.get_text() for t in ax.texts] == ["inf"]
    assert list(twin.lines[0].get_ydata()) == [8, 4, 8]
    assert ax.patches[0].get_facecolor() != ax.patches[1].get_facecolor()  # colour by bit width
    run = RunDirectory(str(tmp_path), "pics")
    save(fig, run.file("sqnr_bits.png"), run.writer, "Quantization/SQNR_and_bits")
    run.close()
    assert open(run.file("sqnr_bits.png"), "rb").read(8) == PNG
    acc = EventAccumulator(run.path)
    acc.Reload()
    (image,) = acc.Images("Quantization/SQNR_and_bits")
    assert image.encoded_image_string[:8] == PNG and image.width > 400


def test_histograms_mark_the_thresholds_and_count_clipping():
    x = torch.linspace(-1, 1, 1001)
    fig = histogram_figure([("relu1", x, (-0.5, 0.5), 4), ("fc", x, None, 8)], "test")
    ax1, ax2 = fig.axes
    assert [line.get_xdata()[0] for line in ax1.lines] == [-0.5, 0.5]
    assert len(ax2.lines) == 0  # no threshold known: none drawn
    assert ax1.get_title() == "relu1 (4b, 49.95 % clipped)"  # 500 of 1001 values outside [-0.5, 0.5]
