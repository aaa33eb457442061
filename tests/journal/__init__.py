"""The journal test suite: one suite, run over every journal backend (see conftest.py)."""
