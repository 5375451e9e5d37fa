"""Answers as they are written: throttled sends and edits, cut to the platform's limit."""
