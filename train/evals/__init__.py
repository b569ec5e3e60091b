"""Evaluations on frozen features."""
