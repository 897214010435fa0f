"""torch.fx layer: tracing, activation sites (fused chains, named Distiller-style), instrumentation,
batch-norm folding and WRPN widening. ``sites`` holds the one table of layer/norm/activation/join ops."""

from compressor.quantization.graph.sites import (
                                                 LAYER_TYPES,
                                                 NORM_TYPES,
                                                 WEIGHT_TYPES,
                                                 ActivationSite,
                                                 find_activation_sites,
                                                 insert_after,
                                                 instrument,
                                                 is_model_boundary,
                                                 is_relu,
                                                 node_kind,
                                                 softmax_dim,
                                                 trace,
                                                 weight_modules,
)

__all__ = ["LAYER_TYPES", "NORM_TYPES", "WEIGHT_TYPES", "ActivationSite", "find_activation_sites", "insert_after",
           "instrument", "is_model_boundary", "is_relu", "node_kind", "softmax_dim", "trace", "weight_modules"]
