"""cxr: chest X-ray classification on the COVID-19 Radiography Database, built on Keras 3."""

__all__ = ["__version__"]

__version__ = "0.1.0"
