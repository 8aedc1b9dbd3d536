"""Expanding the grid into cells and planning every request before anything is paid."""
