"""Fold batch-norm into the preceding convolution or linear layer before post-training quantization.

Uses PyTorch's own ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``; the folded batch-norm is
replaced by ``nn.Identity``, which ``graph.trace`` drops, so module names stay Distiller's.
"""

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from compressor.quantization.graph import sites as graph


def fold_batchnorm(model, folded=None):
    """A copy of ``model`` (in eval mode) with every conv->bn / linear->bn pair folded.

    ``folded``, when given, is filled with {layer name: batch-norm name}: the folded layer now
    outputs what the batch-norm did, so it takes the batch-norm's statistics record.
    """
    model = copy.deepcopy(model).eval()
    gm = graph.trace(model)
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op != "call_module":
            continue
        layer, bn = gm.get_submodule(node.target), gm.get_submodule(user.target)
        if not isinstance(bn, graph.NORM_TYPES) or not bn.track_running_stats:
            continue
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fused = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        model.set_submodule(node.target, fused)
        model.set_submodule(user.target, nn.Identity())
        if folded is not None:
            folded[node.target] = user.target
    return model
