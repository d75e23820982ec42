"""The benchmark suite's sections, one module each; ``suite.py`` runs them."""
