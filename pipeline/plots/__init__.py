"""Plots (matplotlib, Agg backend, PNG files), one module per lesson topic."""
