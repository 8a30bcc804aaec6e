"""Reusable parts of the training scripts in `examples/`: data streams, checkpoints, flags,
self-correction and the generator's training step. Import the submodules directly
(`from detailflow_hf.training.data import build_train_stream`); nothing heavy is imported here."""
