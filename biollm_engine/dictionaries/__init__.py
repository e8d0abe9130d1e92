"""Sparse dictionaries (SAEs, transcoders, skip transcoders, crosscoders) and their formats."""

from .config import DictionaryConfig
from .dictionary import Dictionary, DictionaryOutput
from .formats import check_fits, load_dictionary, save_sparsify

__all__ = ["Dictionary", "DictionaryConfig", "DictionaryOutput", "check_fits",
           "load_dictionary", "save_sparsify"]
