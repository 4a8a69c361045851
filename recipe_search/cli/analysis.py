"""Commands that turn measurements into decisions: pareto, report, compare."""
