"""Modal dialogs: confirmations and the note input."""
