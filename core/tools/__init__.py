"""Tools the model may call: the toolbox, the built-ins, HTTP actions."""
