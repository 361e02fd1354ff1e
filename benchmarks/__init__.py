"""Benchmarks of exo-discovery: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Not tests: nothing here is collected by pytest. Each figure is measured next to a reference in the
same run, so a table from any machine can be read on its own.
"""
