"""The Dagster surface: pure spec builders (specs.py), thin assets over steps.py
(assets.py), the shared resource (resources.py). definitions.py ties them together."""
