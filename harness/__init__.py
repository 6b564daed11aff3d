"""Building blocks of the MLPerf Mixtral-8x7B harness (entry points live at the repository root)."""
