#!/usr/bin/env python3
"""Your own training loop with compressor's scheduler: 8-bit quantization-aware training on the embedded digits.

The loop is Distiller's (``file_config`` and the six callbacks); it trains ``simplenet_digits`` FP32 for one epoch,
then quantized, saves a checkpoint every epoch, resumes from it into a fresh scheduler (the same test accuracy, to
the digit) and exports the quantized model to ONNX, checked against the simulation.

    python examples/train_loop.py --epochs 3 --out /tmp/loop
"""

import argparse
import os

import torch
from torch import nn

from compressor import api
from compressor.data import load_data
from compressor.models import create_model

RECIPE = {  # the same as a YAML file: api.file_config(model, optimizer, "recipe.yaml")
    "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8, "bits_weights": 8,
                         "mode": "ASYMMETRIC_UNSIGNED", "per_channel_wts": True}},
    "lr_schedulers": {"lr": {"class": "StepLR", "step_size": 1, "gamma": 0.7}},
    "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 1, "ending_epoch": 100, "frequency": 1},
                 {"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0, "ending_epoch": 100, "frequency": 1}],
}


def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return 100.0 * correct / len(loader.dataset)


def build(lr):
    torch.manual_seed(0)
    model = create_model("simplenet_digits", "digits")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return api.file_config(model, optimizer, RECIPE), optimizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--out", default="example_run")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, _, test = load_data("digits", None, (1, 8, 8), 64)
    scheduler, optimizer = build(args.lr)
    model = scheduler.model  # the model to train (prepared for quantization, sharing the parameters)
    criterion = nn.CrossEntropyLoss()
    checkpoint = os.path.join(args.out, "checkpoint.pth.tar")
    steps = len(train)
    for epoch in range(args.epochs):
        scheduler.on_epoch_begin(epoch, optimizer)
        model.train()
        for i, (x, y) in enumerate(train):
            scheduler.on_minibatch_begin(epoch, i, steps, optimizer)
            loss = scheduler.before_backward_pass(epoch, i, steps, criterion(model(x), y), optimizer)
            optimizer.zero_grad()
            loss.backward()
            scheduler.before_parameter_optimization(epoch, i, steps, optimizer)
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, steps, optimizer)
        top1 = evaluate(model, test)
        scheduler.on_epoch_end(epoch, optimizer, metrics={"top1": top1})
        api.save_checkpoint(checkpoint, epoch, scheduler, optimizer, arch="simplenet_digits", dataset="digits")
        print(f"epoch {epoch}: test top-1 {top1:.2f} %", flush=True)

    resumed, resumed_optimizer = build(args.lr)  # a fresh scheduler from the same recipe
    next_epoch = api.load_checkpoint(checkpoint, resumed, resumed_optimizer)
    resumed_top1 = evaluate(resumed.model, test)
    print(f"resumed at epoch {next_epoch}: test top-1 {resumed_top1:.2f} %")
    report = api.export(resumed, test, onnx_path=os.path.join(args.out, "model.onnx"))
    print(f"ONNX agrees with the simulation on {report['onnx']['agreement']:.2f} % of the test images")
    return 0 if resumed_top1 == top1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
