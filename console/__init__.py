"""loopdeck's Textual console: renders engine events and sends decisions back through the Session API."""
