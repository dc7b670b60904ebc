"""Robust evaluation offline: TextAttack recipes, the Ray actor pool, robust metrics (the offline resources
the recipes read are :mod:`distat.resources`)."""
