"""notelm: learn music from symbolic scores and write new music."""

__version__ = "0.1.0"
