"""Flows that chain the stages: the demo on a generated task."""
