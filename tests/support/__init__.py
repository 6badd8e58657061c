"""Shared test helpers: data builders (``data``), readers of committed output (``output``), job processes (``processes``)."""
