"""Equivalence check: an exported model must predict what the simulated model predicted."""

import logging

import torch

from compressor.core.progress import progress
from compressor.training.metrics import topk_correct

log = logging.getLogger(__name__)
REQUIRED_AGREEMENT = 99.5  # percent of top-1 predictions


@torch.no_grad()
def agreement(simulated, exported, loader, device="cpu"):
    """Compare top-1 predictions of ``simulated`` (a module) and ``exported`` (a callable on CPU tensors).

    Returns {agreement %, both top-1 %, largest absolute logit difference, images}.
    """
    simulated.eval()
    same = correct_sim = correct_exp = seen = 0
    max_diff = 0.0
    for inputs, target in progress(loader, "verify export"):
        a = simulated(inputs.to(device)).float().cpu()
        b = exported(inputs.cpu()).float()
        same += (a.argmax(1) == b.argmax(1)).sum().item()
        # top-1 counted as evaluate() counts it (topk), so ties of quantized logits break the same way
        correct_sim += topk_correct(a, target)[0]
        correct_exp += topk_correct(b, target)[0]
        seen += target.numel()
        max_diff = max(max_diff, (a - b).abs().max().item())
    result = {"agreement": 100.0 * same / seen, "simulated_top1": 100.0 * correct_sim / seen,
              "exported_top1": 100.0 * correct_exp / seen, "max_logit_diff": max_diff, "images": seen}
    return result


def onnx_runner(path, threads=None):
    """A callable running the ONNX file with onnxruntime's CPU kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])
