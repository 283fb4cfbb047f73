"""Figures (``plots``) and the console summary (``summary``) of a results folder."""
