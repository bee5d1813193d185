"""Helpers shared by the tests and the benchmarks (``tests.support.ros``: child processes and
the node's ``/diagnostics``)."""
