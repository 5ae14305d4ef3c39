"""Tasks: data builders, rule rewards and evaluations (importing registers their rules)."""

import jaxrlhf.tasks.length_control  # noqa: F401  (registers the "length_control" rule)
