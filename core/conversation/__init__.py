"""A message's way through the core: its place in line, the turn, the prompt, long memory."""
