"""Screens: the main supervisory screen, an experiment's details, and help."""
