"""compress_classifier: train, fine-tune or evaluate an image classifier under a compression recipe."""

import logging
import os

import torch
from torch import nn

from compressor.app.args import DISTILLER_SUMMARIES, REFUSED_FLAGS, classifier_parser
from compressor.app.context import RunContext
from compressor.app.deploy_args import run_exports, wants_export
from compressor.app.errors import run_guarded
from compressor.app.kd_args import add_kd_to_recipe, has_kd_from_flags, kd_requested
from compressor.app.post_train import main_from_classifier_args
from compressor.app.prune_sensitivity import run_sense
from compressor.app.run_record import publish, training_record
from compressor.app.summary import print_summary, sparsity_summary
from compressor.core.errors import CheckpointError, UsageError
from compressor.core.io import save_checkpoint
from compressor.core.state_keys import load_weights
from compressor.models import NUM_CLASSES, create_model
from compressor.pruning.thinning import restore_thinning
from compressor.recipe.build import build_scheduler, read_recipe
from compressor.scheduling.pruning import ThinningPolicy
from compressor.training import distributed as ddp
from compressor.training.compile import compile_module, compile_report
from compressor.training.determinism import seed_everything, set_rng_state
from compressor.training.faults import resumable
from compressor.training.loop import THROUGHPUT, evaluate, train_one_epoch
from compressor.training.optimizers import load_optimizer_state, make_optimizer
from compressor.training.state import TrainState, load_model_weights, load_train_state

log = logging.getLogger("compressor")
# run by the post-training app (after or during calibration), never by a training run
PTQ_ONLY_KEYS = ("adaround", "gptq", "bias_correction", "smoothquant_alpha")


def _enabled_bits(modules):
    """(min, max, mean) bits of the enabled quantizers among ``modules`` (32s when none is on)."""
    bits = [int(m.bits) for m in modules if getattr(m, "enabled", False) and getattr(m, "bits", None)]
    return (min(bits), max(bits), round(sum(bits) / len(bits), 3)) if bits else (32, 32, 32.0)


def _quant_bits(scheduler):
    """Bits the run's model computes with at its end, from the live quantizers (not the recipe's defaults): a
    quantizer that never started gives 32/32, a mixed-precision recipe its per-layer range. Returns
    ((weights min, max, mean), (activations min, max, mean))."""
    if scheduler is None or scheduler.quantizer is None:
        return (32, 32, 32.0), (32, 32, 32.0)
    q = scheduler.quantizer
    weights = [m for name, m in q.weight_quantizers.items() if name.endswith(".weight")]
    return _enabled_bits(weights), _enabled_bits(q.activation_quantizers.values())


class ClassifierRun:
    """One training/evaluation run, set up in named steps (the order fixes how the RNGs are consumed)."""

    def __init__(self, args):
        self.args = args
        self.ctx = RunContext.from_args(args)
        self.dataset, self.device, self.gpu_ids = self.ctx.dataset, self.ctx.device, self.ctx.gpu_ids
        self.load_sources()
        self.recipe = self.build_recipe()
        self.check_checkpoint_fits()
        self.run = self.ctx.open_run(os.path.splitext(os.path.basename(args.compress or args.arch))[0], args.compress)
        self.build_model()
        self.save_untrained()
        self.maybe_load_weights()
        self.maybe_resume()
        self.check_exportable()
        self._warn_idle_policies()
        self.attach_policies()

    def load_sources(self):
        """The checkpoint to resume and the weights to load, read before anything is written."""
        args = self.args
        self.checkpoint = load_train_state(args.resume_from) if args.resume_from else None
        weights = args.exp_load_weights_from
        loaded = load_model_weights(weights) if weights else (None, None)
        self.weights = loaded[1]
        # a thinned model's shapes: a fresh model is cut to them before its weights load
        self.thinning = self.checkpoint.thinning if self.checkpoint is not None else \
            (loaded[0].get("thinning") if isinstance(loaded[0], dict) else None)
        # The shuffling seed: fixed by --seed, else drawn once and kept in checkpoints for resume.
        self.data_seed = self.ctx.seed if self.ctx.seed is not None else int.from_bytes(os.urandom(4), "little")
        if self.checkpoint is not None and self.checkpoint.data_seed is not None:
            self.data_seed = self.checkpoint.data_seed

    def build_recipe(self):
        """The recipe: --compress, else the resumed checkpoint's; the --kd-* flags add their distiller."""
        args, recipe = self.args, None
        if args.compress:
            recipe = read_recipe(args.compress)
        elif self.checkpoint and self.checkpoint.recipe:
            recipe = read_recipe(self.checkpoint.recipe, file=f"{args.resume_from} (recipe)")
        if kd_requested(args) and not has_kd_from_flags(recipe):  # a resumed run's recipe may have it already
            data = add_kd_to_recipe(recipe.data if recipe else None, args)
            recipe = read_recipe(data, file=f"{args.compress or 'the command line'} + --kd-* flags")
        return recipe

    def check_checkpoint_fits(self):
        if self.checkpoint is None:
            return
        for saved, mine in ((self.checkpoint.arch, self.args.arch), (self.checkpoint.dataset, self.dataset)):
            if saved and saved != mine:
                raise UsageError(
                    f"--resume-from {self.args.resume_from} holds a {saved} checkpoint; this run uses {mine}"
                )

    def save_untrained(self):
        """Distiller's --save-untrained-model: the initial weights, before any training step."""
        if self.args.save_untrained_model and self.ctx.procs.is_main:
            path = self.run.file("untrained.pth.tar")
            save_checkpoint(path, TrainState.capture(-1, self.args.arch, self.dataset, self.model,
                                                     with_rng=False).to_dict())
            log.info("Untrained weights saved to %s", path)

    def build_model(self):
        """Model, loaders, optimizer and the recipe's scheduler (which prepares the model it quantizes)."""
        args = self.args
        model = create_model(args.arch, self.dataset, pretrained=args.pretrained).to(self.device)
        if self.thinning:
            restore_thinning(model, self.thinning, args.resume_from or args.exp_load_weights_from)
        self.train_loader, self.val_loader, self.test_loader = self.ctx.loaders(
            self.data_seed, args.effective_train_size, args.effective_valid_size, args.effective_test_size
        )
        sampler = self.train_loader.sampler
        shard = f" (this process: {len(sampler)} of each epoch's)" if hasattr(sampler, "world") else ""
        log.info(
            "Dataset %s: %d training%s, %d validation, %d test samples",
            self.dataset,
            len(getattr(sampler, "base", sampler)),  # the whole epoch, not rank 0's shard of it under torchrun
            shard,
            len(self.val_loader.dataset),
            len(self.test_loader.dataset),
        )
        self.optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum, args.weight_decay)
        self.scheduler = build_scheduler(self.recipe, model, self.optimizer) if self.recipe else None
        self.model = self.scheduler.model if self.scheduler else model
        if self.scheduler and self.scheduler.keeper is not None:
            self.scheduler.keeper.thinning = self.thinning  # this recipe's thinning adds to a loaded model's
        if self.scheduler:
            self.scheduler.set_calibration_data(self.train_loader, self.device)
            self.warn_unapplied_quantizers()
        self.model.to(self.device)

    def warn_unapplied_quantizers(self):
        """A recipe whose quantizers no policy applies trains FP32 (Distiller's rule): say so. A PTQ recipe
        (quantizers, no policies) handed to this app trained a 'W4' run in FP32 without a word."""
        data = self.recipe.data or {}
        if not any(data.get(k) for k in ("quantizers", "policies", "lr_schedulers", "calibrators", "distillers")):
            log.warning("WARNING: %s declares nothing (no quantizers, policies or schedulers): this run trains in FP32 "
                        "with a constant learning rate", self.recipe.file)
            return
        declared = list(data.get("quantizers") or {})
        if declared and self.scheduler.quantizer is None:
            log.warning(
                "WARNING: %s declares quantizers (%s) but no policy applies one: this run trains in FP32. Add a "
                "policy ('- quantizer: {instance_name: %s}' with starting_epoch/ending_epoch/frequency), or "
                "quantize after training with apps/post_train_quant.py",
                self.recipe.file, ", ".join(declared), declared[0],
            )

    def maybe_load_weights(self):
        path, state, self.weights = self.args.exp_load_weights_from, self.weights, None  # not kept for the run
        if state is None:
            return
        try:
            if self.scheduler and self.scheduler.quantizer:
                state = self.scheduler.quantizer.adapt_weights(state)
            load_weights(self.model, state)
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"--exp-load-weights-from {path}: {exc}") from None
        log.info("Loaded weights from %s", path)

    def maybe_resume(self):
        procs = self.ctx.procs
        if procs.rank > 0:  # same model on every rank; own random streams (augmentation, dropout)
            seed_everything(self.ctx.seed + procs.rank, self.args.deterministic)
        self.start_epoch, self.best = 0, []
        self.throughput = []  # training images per second of each epoch this process ran
        if self.checkpoint:
            try:
                self._resume(self.checkpoint)
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"--resume-from {self.args.resume_from} does not fit this run: {exc}") from None

    def check_exportable(self):
        quantizer = self.scheduler.quantizer if self.scheduler else None
        if wants_export(self.args) and quantizer is not None and not quantizer.EXPORTABLE:
            raise UsageError(
                f"--export-onnx/--qe-convert-pytorch: export covers the linear quantizers "
                f"(QuantAwareTrainRangeLinearQuantizer, PostTrainLinearQuantizer), not "
                f"{type(quantizer).__name__}; nothing was trained"
            )

    def attach_policies(self):
        """The module the loop calls (DataParallel over several GPUs), handed to the policies, and the loss."""
        self.grad_scaler = None
        if self.args.amp == "fp16":
            if torch.device(self.device).type != "cuda":
                raise UsageError("--amp fp16 needs a GPU (its gradient scaler is CUDA's); on the CPU use --amp bf16")
            self.grad_scaler = torch.amp.GradScaler("cuda")
        if self.args.channels_last:  # before DDP wraps it; the quantizers keep the format (elementwise ops)
            self.model.to(memory_format=torch.channels_last)
        self.net = nn.DataParallel(self.model, self.gpu_ids) if len(self.gpu_ids) > 1 else self.model
        self.eval_net = self.net
        procs = self.ctx.procs
        thinning = [p.epochs for p in (self.scheduler.policies if self.scheduler else [])
                    if isinstance(p, ThinningPolicy) and p.epochs and p.epochs[-1] >= self.start_epoch]
        if procs.active and thinning:  # DDP holds the parameters it was built with; thinning replaces them
            raise UsageError(f"the recipe thins the model at epoch {thinning[0][0]}: not under torchrun (DDP keeps the "
                             "parameters it wrapped). Run the epochs up to and including the thinning in one "
                             "process, then continue under torchrun with --resume-from its checkpoint")
        if procs.active:  # torchrun: DDP trains; each process evaluates its own slice of the sets
            log.info(
                "DistributedDataParallel: %d processes (%s), global batch %d = %d per process",
                procs.world,
                procs.backend,
                self.args.batch_size,
                self.args.batch_size // procs.world,
            )
            self.net, self.eval_net = ddp.wrap(self.model, procs, self.device), self.model
        if self.scheduler:
            self.scheduler.attach(self.net, self.args.arch, self.dataset, self.device)
        if self.args.compile:  # after attach: the policies and checkpoints keep the plain modules and names
            same = self.eval_net is self.net
            self.net = compile_module(self.net)
            self.eval_net = self.net if same else compile_module(self.eval_net)
        self.criterion = nn.CrossEntropyLoss().to(self.device)

    def _resume(self, ckpt):
        load_weights(self.model, ckpt.state_dict)
        if self.args.reset_optimizer:
            log.info("Resumed weights from %s; optimizer reset, starting at epoch 0", self.args.resume_from)
            return
        if ckpt.optimizer_state_dict is not None and not self.args.evaluate:
            load_optimizer_state(self.optimizer, self.args.optimizer, ckpt.optimizer_state_dict)
        if self.scheduler and ckpt.compression_sched:
            self.scheduler.load_state_dict(ckpt.compression_sched)
        rng = ddp.my_rng_state(ckpt.rng, ckpt.rng_ranks, self.ctx.procs)
        if rng:
            set_rng_state(rng)
        self.best = [tuple(b) for b in ckpt.best_scores]
        self.start_epoch = ckpt.epoch + 1
        log.info("Resumed from %s at epoch %d", self.args.resume_from, self.start_epoch)
        if self.start_epoch >= self.args.epochs and not self.args.evaluate:
            log.warning("WARNING: the checkpoint finished epoch %d and --epochs is %d: nothing is left to train, the "
                        "run only evaluates it (raise --epochs to continue training)", ckpt.epoch, self.args.epochs)

    def _warn_idle_policies(self):
        quantizer = self.scheduler.quantizer if self.scheduler else None
        unused = [k for k in PTQ_ONLY_KEYS if quantizer is not None and quantizer.config.get(k)]
        if unused:
            log.warning("WARNING: the recipe's %s act only in post_train_quant.py (after its calibration); "
                        "compress_classifier.py does not run them", " and ".join(unused))
        for policy in self.scheduler.policies if self.scheduler else []:
            if policy.epochs and policy.epochs[0] >= self.args.epochs:
                log.warning(
                    "WARNING: %s starts at epoch %d, after the run's last epoch (%d): it never acts",
                    type(policy).__name__,
                    policy.epochs[0],
                    self.args.epochs - 1,
                )

    def train_state(self, epoch):
        """The checkpoint (collective under DDP: every rank calls it, rank 0 writes it)."""
        state = TrainState.capture(
            epoch,
            self.args.arch,
            self.dataset,
            self.model,
            self.optimizer,
            self.scheduler,
            best_scores=self.best,
            data_seed=self.data_seed,
            thinning=self.scheduler.keeper.thinning if self.scheduler and self.scheduler.keeper else self.thinning,
        )
        if self.ctx.procs.active:
            state.rng_ranks = ddp.rng_states(state.rng)
        return state

    def train(self):
        args, run = self.args, self.run
        for epoch in range(self.start_epoch, args.epochs):
            self.train_loader.sampler.set_epoch(epoch)
            if self.scheduler:
                self.scheduler.on_epoch_begin(epoch, self.optimizer)
            stats = train_one_epoch(
                self.net,
                self.train_loader,
                self.criterion,
                self.optimizer,
                self.scheduler,
                epoch,
                self.device,
                args.print_freq,
                args.amp,
                self.grad_scaler,
            )
            if args.compile:
                log.info("torch.compile: %s", compile_report())
            log.info("--- validate (epoch=%d)-----------", epoch)
            val = evaluate(
                self.eval_net,
                self.val_loader,
                self.criterion,
                self.device,
                self._confusion_classes(),
                desc=f"validate {epoch}",
                amp=args.amp,
            )
            self._log_confusion(val)
            if self.scheduler:
                self.scheduler.on_epoch_end(epoch, self.optimizer, metrics={"min": val["loss"], "max": val["top1"]})
            run.scalars({f"Performance/Training/{k}": v for k, v in stats.items()}, epoch)
            self.throughput.append(round(stats[THROUGHPUT], 1))
            run.scalars(
                {
                    "Performance/Validation/Loss": val["loss"],
                    "Performance/Validation/Top1": val["top1"],
                    "Performance/Validation/Top5": val["top5"],
                },
                epoch,
            )
            if args.param_hist and run.writer is not None:
                for name, p in self.model.named_parameters():
                    run.writer.add_histogram(name.replace(".", "/"), p.detach().cpu(), epoch)
            self.best.append((val["top1"], val["top5"], epoch))
            self.best = sorted(self.best, key=lambda b: (-b[0], b[2]))[: args.num_best_scores]
            is_best = self.best[0][2] == epoch
            for top1, top5, e in self.best:
                log.info("==> Best [Top1: %.3f   Top5: %.3f   on epoch: %d]", top1, top5, e)
            run.save_checkpoint(self.train_state(epoch).to_dict(), is_best)
        return max(0, args.epochs - self.start_epoch)

    def _confusion_classes(self):
        return NUM_CLASSES[self.dataset] if self.args.confusion else None

    def _log_confusion(self, result):
        if "confusion" in result:
            log.info(
                "Confusion matrix (rows: target, columns: prediction):\n%s",
                "\n".join(" ".join(f"{v:5d}" for v in row) for row in result["confusion"]),
            )

    def test(self):
        log.info("--- test ---------------------")
        result = evaluate(
            self.eval_net, self.test_loader, self.criterion, self.device, self._confusion_classes(), "test",
            self.args.amp,
        )
        self._log_confusion(result)
        step = max(self.args.epochs - 1, 0)
        self.run.scalars(
            {
                "Performance/Test/Loss": result["loss"],
                "Performance/Test/Top1": result["top1"],
                "Performance/Test/Top5": result["top5"],
            },
            step,
        )
        return result

    def _quantized(self):
        """True when the model computes quantized (the quantizer is on at the end of the run)."""
        q = self.scheduler.quantizer if self.scheduler else None
        return (
            q is not None
            and any(m.enabled for m in q.activation_quantizers.values())
            or (q is not None and any(m.enabled for m in q.weight_quantizers.values()))
        )

    def summary(self, epochs_run, test):
        (w_min, bits_w, w_mean), (a_min, bits_a, a_mean) = _quant_bits(self.scheduler)
        best = {"epoch": self.best[0][2], "top1": self.best[0][0]} if self.best else None
        data = {
            "arch": self.args.arch,
            "dataset": self.dataset,
            "recipe": self.args.compress or (self.args.resume_from if self.recipe else None),
            "epochs_run": epochs_run,
            "epochs": self.args.epochs,
            "best": best,
            "test": {k: test[k] for k in ("top1", "top5", "loss", "images")},
            "bits_weights": bits_w,  # the widest layer's; the range below when layers differ
            "bits_activations": bits_a,
            "bits_range": {"weights": {"min": w_min, "max": bits_w, "mean": w_mean},
                           "activations": {"min": a_min, "max": bits_a, "mean": a_mean}},
            "quantized": self._quantized(),
            "run_dir": self.run.path,
        }
        if self.scheduler and self.scheduler.masks is not None or self.thinning:
            keeper = self.scheduler.keeper if self.scheduler else None
            dense = create_model(self.args.arch, self.dataset).to(self.device)
            data["sparsity"] = sparsity_summary(self.model, next(iter(self.test_loader))[0][:1], dense)
            data["sparsity"]["thinned"] = bool((keeper and keeper.thinning) or self.thinning)
        if self.throughput:  # training images per second, per epoch this process ran (all processes' images)
            data["throughput"] = {"train_images_per_s": self.throughput,
                                  "mean_train_images_per_s": round(sum(self.throughput) / len(self.throughput), 1)}
        quantizer = self.scheduler.quantizer if self.scheduler else None
        if quantizer is not None and quantizer.prepared is not None and self._quantized():
            data["model_size_bits"] = {"quantized": quantizer.model_size_bits(), "fp32": quantizer.fp32_bits}
        main, active = self.ctx.procs.is_main, self.ctx.procs.active
        exported = main and run_exports(
            self.args,
            self.run,
            os.path.basename(self.run.path).split("___")[0],
            self.model,
            self._quantized(),
            self.ctx.full_test_loader(self.args.effective_test_size) if active else self.test_loader,
            {
                "arch": self.args.arch,
                "dataset": self.dataset,
                "recipe": self.scheduler.recipe if self.scheduler else None,
            },
        )
        if exported:
            data["export"] = exported
        record = training_record(
            self.args,
            self.dataset,
            self.recipe and self.recipe.data,
            (bits_w, bits_a),
            data,
            self.model,
            next(iter(self.test_loader))[0][:1],
        )
        publish(self.run, data, record, step=max(self.args.epochs - 1, 0))
        return data


def run_classifier(args):
    run = ClassifierRun(args)
    try:
        if args.summary:
            if run.ctx.procs.is_main:
                print_summary(run.model, args.summary, run.train_loader)
            return
        if args.sense:
            run_sense(run, args)
            return
        if args.evaluate and not (args.resume_from or args.exp_load_weights_from or getattr(args, "pretrained", False)):
            log.warning("WARNING: --evaluate without --resume-from, --exp-load-weights-from or --pretrained: these are "
                        "the model's random initial weights")
        epochs_run = 0 if args.evaluate else resumable(run.run, run.train)
        run.summary(epochs_run, run.test())
    finally:
        run.ctx.close()  # the run folder, and the process group under torchrun


def _refuse_distiller_flags(args):
    """Distiller's flags with no counterpart here, and flags that contradict each other: a clear refusal (exit 2,
    nothing run)."""
    if args.resume_from and args.exp_load_weights_from:  # one was silently ignored
        raise UsageError("give one of --resume-from (continue a run: weights, optimizer, epoch) and "
                         "--exp-load-weights-from (start a new run from weights)")
    for key, message in REFUSED_FLAGS.items():
        if getattr(args, key, None):
            raise UsageError(message)
    for choice in args.summary or ():
        if choice in DISTILLER_SUMMARIES:
            raise UsageError(f"--summary {choice}: {DISTILLER_SUMMARIES[choice]}")


def main(argv=None):
    args = classifier_parser().parse_args(argv)
    refusal = run_guarded(_refuse_distiller_flags, args)
    if refusal:
        return refusal
    logger = logging.getLogger("compressor")
    level = logger.level
    if args.verbose:
        logger.setLevel(logging.DEBUG)
    try:
        if args.qe or args.qe_calibration is not None:
            return main_from_classifier_args(args)
        return run_guarded(run_classifier, args)
    finally:
        logger.setLevel(level)  # a later run in this process (tests, notebooks) starts at the default again
