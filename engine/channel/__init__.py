"""The engine's channel: a Unix domain socket over which consoles replay and follow events and send commands."""
