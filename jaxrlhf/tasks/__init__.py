"""Tasks: data builders, rule rewards and evaluations (importing registers their rules)."""
