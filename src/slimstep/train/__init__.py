"""Training: one loop for every method (:mod:`slimstep.train.loop`), EMA,
checkpoints and data-parallel helpers."""
