"""Prefect task runners with scalegroups' start-up behaviour, one module per engine.

Each module imports its engine at the top; `scalegroups.runners` imports them lazily so that a
missing optional engine fails with the name of the extra to install.
"""
