"""Tasks built on the library (the library never imports them): data builders, rule rewards,
evaluations, pipelines and their CLI commands. Each task plugs into the CLI through the
``jaxrlhf.tasks`` entry-point group (see pyproject.toml and jaxrlhf.cli)."""
