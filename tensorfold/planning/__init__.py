"""Ranks chosen by latency: per-chain latency tables and the hardware-aware planner the
factorization passes take (PassContext.planner)."""
