"""Persona vectors: extraction from trait packs, the vector file format, and layer choice."""

from screener.vectors.store import TraitVector, VectorFile, load_vectors, save_vectors

__all__ = ["TraitVector", "VectorFile", "load_vectors", "save_vectors"]
