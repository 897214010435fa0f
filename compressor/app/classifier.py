"""compress_classifier: train, fine-tune or evaluate an image classifier under a compression recipe."""

import logging
import os
import sys

import torch
from torch import nn

from compressor.data import load_data
from compressor.data.loaders import SHAPE_ADAPTIVE
from compressor.models import NUM_CLASSES, arch_family, create_model
from compressor.recipe.build import build_scheduler, read_recipe
from compressor.core.errors import CheckpointError
from compressor.core.io import load_checkpoint
from compressor.core.state_keys import load_weights, model_state
from compressor.training.determinism import rng_state, seed_everything, set_rng_state
from compressor.training.loop import evaluate, train_one_epoch
from compressor.training.run_dir import RunDirectory
from compressor.app.args import classifier_parser
from compressor.app.common import pick_device
from compressor.app.post_train import main_from_classifier_args
from compressor.app.deploy_args import run_exports, wants_export
from compressor.core.errors import UsageError
from compressor.app.errors import run_guarded
from compressor.app.kd_args import add_kd_to_recipe, has_kd_from_flags, kd_requested
from compressor.app.summary import print_summary

log = logging.getLogger("compressor")


def _quant_bits(scheduler):
    if scheduler is None or scheduler.quantizer is None:
        return 32, 32
    cfg = scheduler.quantizer.config
    return cfg.get("bits_weights") or 32, cfg.get("bits_activations") or 32


class ClassifierRun:
    def __init__(self, args):
        self.args = args
        self.dataset = args.dataset or arch_family(args.arch)[0]
        self.device, self.gpu_ids = pick_device(args)
        if args.deterministic and args.seed is None:
            args.seed = 0
        if args.seed is not None:
            seed_everything(args.seed, args.deterministic)
        # The shuffling seed: fixed by --seed, else drawn once and kept in checkpoints for resume.
        self.data_seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")

        self.checkpoint = load_checkpoint(args.resume_from) if args.resume_from else None
        if self.checkpoint is not None:
            missing = [k for k in ("state_dict", "optimizer_state_dict", "epoch") if k not in self.checkpoint]
            if missing:
                raise CheckpointError(f"--resume-from {args.resume_from} is not a training checkpoint of this tool "
                                      f"(no {', '.join(missing)}); use --exp-load-weights-from to load weights only")
            self.data_seed = self.checkpoint.get("data_seed", self.data_seed)
        self.recipe = None
        if args.compress:
            self.recipe = read_recipe(args.compress)
        elif self.checkpoint and self.checkpoint.get("recipe"):
            self.recipe = read_recipe(self.checkpoint["recipe"], file=f"{args.resume_from} (recipe)")
        if kd_requested(args) and not has_kd_from_flags(self.recipe):  # a resumed run's recipe may have it already
            data = add_kd_to_recipe(self.recipe.data if self.recipe else None, args)
            self.recipe = read_recipe(data, file=f"{args.compress or 'the command line'} + --kd-* flags")
        if self.checkpoint:
            for key in ("arch", "dataset"):
                saved = self.checkpoint.get(key)
                mine = args.arch if key == "arch" else self.dataset
                if saved and saved != mine:
                    raise UsageError(f"--resume-from {args.resume_from} holds a {saved} checkpoint; this run uses {mine}")

        self.run = RunDirectory(args.out_dir, args.name or os.path.splitext(os.path.basename(args.compress or args.arch))[0])
        log.info("Run folder: %s", self.run.path)
        log.info("Command line: %s", " ".join(sys.argv))
        self.run.copy_in(args.compress)

        model = create_model(args.arch, self.dataset, pretrained=args.pretrained).to(self.device)
        shape = arch_family(args.arch)[1] if self.dataset in SHAPE_ADAPTIVE else None
        self.train_loader, self.val_loader, self.test_loader = load_data(
            self.dataset, args.data, shape, args.batch_size, args.workers, args.validation_split,
            args.effective_train_size, args.effective_valid_size, args.effective_test_size, seed=self.data_seed,
        )
        log.info("Dataset %s: %d training, %d validation, %d test samples", self.dataset,
                 len(self.train_loader.sampler), len(self.val_loader.dataset), len(self.test_loader.dataset))

        self.optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.scheduler = build_scheduler(self.recipe, model, self.optimizer) if self.recipe else None
        self.model = self.scheduler.model if self.scheduler else model
        if self.scheduler:
            self.scheduler.set_calibration_data(self.train_loader, self.device)
        self.model.to(self.device)
        if args.exp_load_weights_from:
            try:
                state = model_state(load_checkpoint(args.exp_load_weights_from))
                if self.scheduler and self.scheduler.quantizer:
                    state = self.scheduler.quantizer.adapt_weights(state)
                load_weights(self.model, state)
            except (RuntimeError, ValueError) as exc:
                raise CheckpointError(f"--exp-load-weights-from {args.exp_load_weights_from}: {exc}") from None
            log.info("Loaded weights from %s", args.exp_load_weights_from)

        self.start_epoch, self.best = 0, []
        if self.checkpoint:
            try:
                self._resume(self.checkpoint)
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"--resume-from {args.resume_from} does not fit this run: {exc}") from None
        quantizer = self.scheduler.quantizer if self.scheduler else None
        if wants_export(args) and quantizer is not None and not quantizer.EXPORTABLE:
            raise UsageError(f"--export-onnx/--qe-convert-pytorch: export covers the linear quantizers "
                             f"(QuantAwareTrainRangeLinearQuantizer, PostTrainLinearQuantizer), not "
                             f"{type(quantizer).__name__}; nothing was trained")
        self._warn_idle_policies()
        self.net = nn.DataParallel(self.model, self.gpu_ids) if len(self.gpu_ids) > 1 else self.model
        if self.scheduler:
            self.scheduler.attach(self.net, args.arch, self.dataset, self.device)
        self.criterion = nn.CrossEntropyLoss().to(self.device)

    def _resume(self, ckpt):
        load_weights(self.model, ckpt["state_dict"])
        if self.args.reset_optimizer:
            log.info("Resumed weights from %s; optimizer reset, starting at epoch 0", self.args.resume_from)
            return
        if ckpt["optimizer_state_dict"] is not None and not self.args.evaluate:
            self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        if self.scheduler and ckpt.get("compression_sched"):
            self.scheduler.load_state_dict(ckpt["compression_sched"])
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        self.best = [tuple(b) for b in ckpt.get("best_scores", [])]
        self.start_epoch = ckpt["epoch"] + 1
        log.info("Resumed from %s at epoch %d", self.args.resume_from, self.start_epoch)

    def _warn_idle_policies(self):
        for policy in self.scheduler.policies if self.scheduler else []:
            if policy.epochs and policy.epochs[0] >= self.args.epochs:
                log.warning("WARNING: %s starts at epoch %d, after the run's last epoch (%d): it never acts",
                            type(policy).__name__, policy.epochs[0], self.args.epochs - 1)

    def checkpoint_dict(self, epoch):
        return {
            "epoch": epoch,
            "arch": self.args.arch,
            "dataset": self.dataset,
            "state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "compression_sched": self.scheduler.state_dict() if self.scheduler else None,
            "recipe": self.scheduler.recipe if self.scheduler else None,
            "quantizer": self.scheduler.quantizer.state_dict() if self.scheduler and self.scheduler.quantizer else None,
            "rng": rng_state(),
            "best_scores": [list(b) for b in self.best],
            "data_seed": self.data_seed,
        }

    def train(self):
        args, run = self.args, self.run
        for epoch in range(self.start_epoch, args.epochs):
            self.train_loader.sampler.set_epoch(epoch)
            if self.scheduler:
                self.scheduler.on_epoch_begin(epoch, self.optimizer)
            stats = train_one_epoch(self.net, self.train_loader, self.criterion, self.optimizer, self.scheduler,
                                    epoch, self.device, args.print_freq)
            log.info("--- validate (epoch=%d)-----------", epoch)
            val = evaluate(self.net, self.val_loader, self.criterion, self.device,
                           self._confusion_classes(), desc=f"validate {epoch}")
            self._log_confusion(val)
            if self.scheduler:
                self.scheduler.on_epoch_end(epoch, self.optimizer, metrics={"min": val["loss"], "max": val["top1"]})
            run.scalars({f"Performance/Training/{k}": v for k, v in stats.items()}, epoch)
            run.scalars({"Performance/Validation/Loss": val["loss"], "Performance/Validation/Top1": val["top1"],
                         "Performance/Validation/Top5": val["top5"]}, epoch)
            if args.param_hist and run.writer is not None:
                for name, p in self.model.named_parameters():
                    run.writer.add_histogram(name.replace(".", "/"), p.detach().cpu(), epoch)
            self.best.append((val["top1"], val["top5"], epoch))
            self.best = sorted(self.best, key=lambda b: (-b[0], b[2]))[: args.num_best_scores]
            is_best = self.best[0][2] == epoch
            for top1, top5, e in self.best:
                log.info("==> Best [Top1: %.3f   Top5: %.3f   on epoch: %d]", top1, top5, e)
            run.save_checkpoint(self.checkpoint_dict(epoch), is_best)
        return max(0, args.epochs - self.start_epoch)

    def _confusion_classes(self):
        return NUM_CLASSES[self.dataset] if self.args.confusion else None

    def _log_confusion(self, result):
        if "confusion" in result:
            log.info("Confusion matrix (rows: target, columns: prediction):\n%s",
                     "\n".join(" ".join(f"{v:5d}" for v in row) for row in result["confusion"]))

    def test(self):
        log.info("--- test ---------------------")
        result = evaluate(self.net, self.test_loader, self.criterion, self.device, self._confusion_classes(), "test")
        self._log_confusion(result)
        step = max(self.args.epochs - 1, 0)
        self.run.scalars({"Performance/Test/Loss": result["loss"], "Performance/Test/Top1": result["top1"],
                          "Performance/Test/Top5": result["top5"]}, step)
        return result

    def _quantized(self):
        """True when the model computes quantized (the quantizer is on at the end of the run)."""
        q = self.scheduler.quantizer if self.scheduler else None
        return q is not None and any(m.enabled for m in q.activation_quantizers.values()) or \
            (q is not None and any(m.enabled for m in q.weight_quantizers.values()))

    def summary(self, epochs_run, test):
        bits_w, bits_a = _quant_bits(self.scheduler)
        best = {"epoch": self.best[0][2], "top1": self.best[0][0]} if self.best else None
        data = {
            "arch": self.args.arch,
            "dataset": self.dataset,
            "recipe": self.args.compress or (self.args.resume_from if self.recipe else None),
            "epochs_run": epochs_run,
            "epochs": self.args.epochs,
            "best": best,
            "test": {k: test[k] for k in ("top1", "top5", "loss")},
            "bits_weights": bits_w,
            "bits_activations": bits_a,
            "run_dir": self.run.path,
        }
        quantizer = self.scheduler.quantizer if self.scheduler else None
        if quantizer is not None and quantizer.prepared is not None:
            data["model_size_bits"] = {"quantized": quantizer.model_size_bits(), "fp32": quantizer.fp32_bits}
        exported = run_exports(self.args, self.run, os.path.basename(self.run.path).split("___")[0], self.model,
                               self._quantized(), self.test_loader,
                               {"arch": self.args.arch, "dataset": self.dataset,
                                "recipe": self.scheduler.recipe if self.scheduler else None})
        if exported:
            data["export"] = exported
        self.run.write_json("summary.json", data)
        hparams = {"arch": self.args.arch, "dataset": self.dataset,
                   "recipe": os.path.basename(self.args.compress or "none"),
                   "lr": self.args.lr, "epochs": self.args.epochs, "batch_size": self.args.batch_size,
                   "bits_weights": bits_w, "bits_activations": bits_a}
        self.run.hparams(hparams, {"Performance/Test/Top1": test["top1"], "Performance/Test/Loss": test["loss"],
                                   "Performance/Validation/Top1": best["top1"] if best else 0.0})
        return data


def run_classifier(args):
    run = ClassifierRun(args)
    try:
        if args.summary:
            print_summary(run.model, args.summary, run.train_loader)
            return
        epochs_run = 0 if args.evaluate else run.train()
        run.summary(epochs_run, run.test())
    finally:
        run.run.close()


def main(argv=None):
    args = classifier_parser().parse_args(argv)
    if args.qe or args.qe_calibration is not None:
        return main_from_classifier_args(args)
    return run_guarded(run_classifier, args)
