"""Automated gradual pruning's sparsity curve (Zhu & Gupta 2017), as Distiller computes it."""


def agp_sparsity(initial, final, epoch, start, end, frequency=1):
    """The target sparsity at ``epoch`` of a pruner acting in [start, end) every ``frequency`` epochs.

    Cubic from ``initial`` at ``start`` to ``final`` at the last epoch the pruner acts in,
    ``start + ((end - start - 1) // frequency) * frequency`` (Distiller's span, so the last pruning step
    reaches ``final`` exactly); after it, ``final``.
    """
    span = ((end - start - 1) // frequency) * frequency
    if span <= 0:
        return final
    progress = min(max((epoch - start) / span, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3
