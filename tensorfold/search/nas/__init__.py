"""Architecture search over DARTS-style cells: DARTS, aging evolution, NSGA-II, random search."""
