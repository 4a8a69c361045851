"""Commands that turn measurements into decisions: sensitivity, pareto, report, compare."""
