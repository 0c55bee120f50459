"""mlmlab: a terminal workbench for masked language models."""

__version__ = "0.1.0"
