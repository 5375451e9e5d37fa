"""The stores behind the core's ports (`core/protocols.py`): where conversation state lives."""
