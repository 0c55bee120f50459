"""Export a run's checkpoint as a Hugging Face `transformers` model folder (`mlmlab export`).

`writer` assembles the folder, `tokenizer_files` and `card` write its tokenizer and model card,
`hf/modeling_mlmlab.py` is the modelling code copied into it, and `cli_command` is the subcommand.
Nothing here imports `transformers`; this package file imports only the standard library, so the
CLI can add the subcommand, and say what is missing, without loading torch.
"""

INSTALL_HINT = 'pip install "mlmlab[hf]"'


def require_safetensors() -> None:
    """One line naming the extra to install when `safetensors` is missing (export writes its format)."""
    from mlmlab.errors import MlmlabError

    try:
        import safetensors  # noqa: F401 - small: its Rust extension, no torch
    except ImportError:
        raise MlmlabError(f"exporting writes safetensors weights, and safetensors is not installed: {INSTALL_HINT}") from None
