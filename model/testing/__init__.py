"""Helpers for tests and benchmarks only; nothing in x2i's own code paths imports them.

    tiny           random-weight models and complete tiny checkpoints (every layout), made on the spot
    shapes_check   does a generated image show the shapes-world prompt's colour and shape?
"""
