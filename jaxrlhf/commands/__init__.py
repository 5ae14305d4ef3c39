"""The subcommands of the ``jaxrlhf`` command line (jaxrlhf/cli.py builds the parser from them):
training stages and config show (training.py), the model-facing commands (models.py), what they
share (common.py)."""
