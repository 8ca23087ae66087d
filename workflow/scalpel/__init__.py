"""Scalpel vs. Hammer: the logic of the workflow, one module per stage (see the package README)."""
