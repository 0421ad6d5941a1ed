"""Searches: ranks over the pass suite (ranks.py), architectures (nas/)."""
