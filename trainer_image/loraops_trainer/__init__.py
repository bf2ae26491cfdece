"""loraops_trainer: the training, evaluation and merge program run in loraops' Jobs."""

__version__ = "0.1.0"
