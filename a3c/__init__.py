"""a3c: a truly asynchronous Hogwild A3C trainer."""

__version__ = "0.1.0"
