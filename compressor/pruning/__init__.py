"""Pruning: masks chosen by magnitude or by ranked structures, on a schedule, and thinning that removes them.

Layers, lowest first: ``criteria`` (which weights a fraction or threshold removes), ``schedule`` (AGP's sparsity
curve), ``masks`` (the library-owned masks and how they are kept), ``graph`` (which channels are tied by adds and
batch-norm), ``pruners`` (Distiller's recipe classes), ``thinning`` (physically removing pruned channels),
``summary`` (the sparsity table).
"""
