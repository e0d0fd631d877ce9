"""Widgets of the main screen; each draws one part of the SessionView."""
