"""What a recipe schedules: the compression scheduler, its policies, LR schedulers, calibration stages,
knowledge distillation. Built from a recipe by ``compressor.recipe.build``."""
