"""Robust evaluation offline: attack resources, TextAttack recipes, the Ray actor pool, robust metrics."""
