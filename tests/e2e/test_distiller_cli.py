"""Every --qe flag of Distiller's post-training guide (long and short forms), --qe-pytorch-backend,
--qe-lapq, and --quantize-eval --pretrained from local torchvision weights."""

import glob
import os
import shlex

import pytest
import torch
import torchvision

from compressor.app.args import classifier_parser
from compressor.app.classifier import main as classifier
from compressor.app.qe_args import qe_config

# the 10 rows of command_line.md (Distiller's guide), paths as there
GUIDE = [
    "-a resnet50 --pretrained IMAGENET --evaluate",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-mode sym --qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-mode sym --qe-per-channel --qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-mode sym --qe-per-channel --qe-clip-acts avg "
    "--qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-mode sym --qe-per-channel --qe-clip-acts avg "
    "--qe-no-clip-layers fc --qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-mode asym_u --qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-mode asym_u --qe-per-channel --qe-clip-acts avg "
    "--qe-no-clip-layers fc --qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-bits-acts 6 --qe-bits-wts 6 --qe-mode sym "
    "--qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-bits-acts 6 --qe-bits-wts 6 --qe-mode asym_u "
    "--qe-stats-file S",
    "-a resnet50 --pretrained IMAGENET --evaluate --quantize-eval --qe-bits-acts 6 --qe-bits-wts 6 --qe-mode asym_u "
    "--qe-per-channel --qe-clip-acts avg --qe-no-clip-layers fc --qe-stats-file S",
]

SHORT = [("--qem asym_u", "--qe-mode asym_u", None),
         ("--qema asym_s", "--qe-mode-acts asym_s", None), ("--qemw sym", "--qe-mode-wts sym", None),
         ("--qeba 6", "--qe-bits-acts 6", None), ("--qebw 4", "--qe-bits-wts 4", None),
         ("--qeca avg", "--qe-clip-acts avg", None), ("--qencl fc", "--qe-no-clip-layers fc", None),
         ("--qenql conv1 fc", "--qe-no-quant-layers conv1 fc", None), ("--qepc", "--qe-per-channel", None),
         ("--qesab 16", "--qe-scale-approx-bits 16", None), ("--qept", "--qe-convert-pytorch", None)]


def parse(line):
    return classifier_parser().parse_args(shlex.split(line))


@pytest.mark.parametrize("row", range(len(GUIDE)))
def test_every_row_of_distillers_guide_parses_and_configures(row):
    args = parse(GUIDE[row])
    assert args.arch == "resnet50" and args.pretrained and args.evaluate
    if args.qe:
        config = qe_config(args)
        assert config["model_activation_stats"] == "S"
        assert config["bits_activations"] == args.qe_bits_acts


@pytest.mark.parametrize("short, long, _", SHORT)
def test_short_forms_mean_the_long_ones(short, long, _):
    assert parse("--qe").qe and parse("--quantize-eval").qe and not parse("").qe
    a, b = parse(short + " --qe"), parse(long + " --qe")
    assert vars(a) == vars(b)
    assert vars(a) != vars(parse("--qe"))


def test_pytorch_backend_maps_onto_our_int8_engines():
    assert parse("--qept --qe-pytorch-backend fbgemm").int8_engine == "x86"
    assert parse("--qept --qe-pytorch-backend qnnpack").int8_engine == "qnnpack"
    assert parse("--qept").int8_engine == "auto"  # our default
    with pytest.raises(SystemExit):
        parse("--qe-pytorch-backend onednn")


def test_lapq_flags_of_distillers_example_parse():
    args = parse("--eval --qe --qe-lapq -a resnet18 --pretrained IMAGENET --lapq-eval-size 0.01 --lapq-maxiter 2 "
                 "--qe-config-file C -b 500 --lapq-init-mode L3 --lapq-init-method powell "
                 "--lapq-eval-memoize-dataloader --det --lapq-search-clipping")
    assert args.qe_lapq and args.lapq_init_mode == "L3" and args.lapq_maxiter == 2 and args.lapq_eval_size == 0.01


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def imagenet_folder(root, per_class=2):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            os.makedirs(root / split / cls, exist_ok=True)
            for i in range(per_class):
                pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_qe_pretrained_without_local_weights_is_a_clear_error(tmp_path, torch_home, capsys):
    data = imagenet_folder(tmp_path / "imagenet")
    code = classifier(["-a", "resnet18", "--pretrained", str(data), "--evaluate", "--qe", "-o", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "weights for resnet18 are not on this machine" in err and str(torch_home) in err


@pytest.mark.slow
def test_qe_pretrained_uses_local_torchvision_weights(tmp_path, torch_home):
    """Distiller's standard command: --pretrained --evaluate --quantize-eval, weights from TORCH_HOME."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    path = torch_home / "hub" / "checkpoints" / os.path.basename(weights.url)
    os.makedirs(path.parent)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    data = imagenet_folder(tmp_path / "imagenet")
    assert classifier(["-a", "resnet18", "--pretrained", str(data), "--evaluate", "--qe", "--qem", "asym_u",
                       "--qeca", "avg", "--qe-calibration", "1", "-b", "4", "-o", str(tmp_path), "-n", "pre"]) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "pre___*"))
    assert "torchvision's pretrained resnet18" in open(os.path.join(run, "summary.json")).read()


@pytest.mark.parametrize("argv, message", [
    (["--act-stats", "test"], "collect activation statistics with apps/post_train_quant.py"),
    (["--summary", "png"], "--summary png: compressor compare --plot"),
])
def test_distiller_flags_without_a_counterpart_are_refused_naming_the_replacement(argv, message, capsys):
    from compressor.app.classifier import main

    assert main(["-a", "simplenet_digits", "--dataset", "digits", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_distiller_flags_that_work_here(tmp_path):
    import glob
    import os

    import torch

    from compressor.app.classifier import main

    assert main(["-a", "simplenet_digits", "--dataset", "digits", "--epochs", "1", "--etrs", "0.1", "-p", "0",
                 "-v", "--load-serialized", "--save-untrained-model", "-o", str(tmp_path), "-n", "d"]) == 0
    (run,) = glob.glob(os.path.join(tmp_path, "d___*"))
    untrained = torch.load(os.path.join(run, "untrained.pth.tar"), weights_only=True)
    trained = torch.load(os.path.join(run, "checkpoint.pth.tar"), weights_only=True)
    assert untrained["epoch"] == -1 and not torch.equal(untrained["state_dict"]["conv1.weight"],
                                                        trained["state_dict"]["conv1.weight"])


def test_resume_and_load_weights_together_are_refused(capsys):
    from compressor.app.classifier import main

    assert main(["-a", "simplenet_digits", "--dataset", "digits", "--resume-from", "a", "--exp-load-weights-from",
                 "b"]) == 2
    assert "give one of --resume-from" in capsys.readouterr().err


def test_integer_arithmetic_flag_is_the_recipe_key():
    assert "integer_arithmetic" not in qe_config(parse("--qe"))  # null: decided by the other settings (float here)
    assert qe_config(parse("--qe --qe-integer-arithmetic"))["integer_arithmetic"] is True
