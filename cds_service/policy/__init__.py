"""Declarative drug policies and the three-valued engine that evaluates them over ``Facts``."""
