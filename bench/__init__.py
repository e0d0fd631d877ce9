"""loopdeck's benchmarks: scripts that print figures. `python -m bench [--quick] [names…]` runs them all."""
