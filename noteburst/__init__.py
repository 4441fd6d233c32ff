"""Noteburst: run Jupyter notebooks headlessly, on demand, behind a GraphQL API."""

__all__ = ["__version__"]

__version__ = "0.1.0"
