"""Typed errors. Every message says what is wrong and how to fix it."""


class DeparturesError(Exception):
    """Base class of all errors a user can cause and fix."""


class InputFileError(DeparturesError):
    """The file is missing, unreadable, or not an .h5ad."""


class DataValidationError(DeparturesError):
    """The AnnData is readable but not usable as it is."""


class KeyNotFoundError(DataValidationError):
    """An obs column the user mapped does not exist."""


class NoControlCellsError(DataValidationError):
    """No cell carries the control value."""


class TooFewCellsError(DataValidationError):
    """Some perturbation has fewer cells than the minimum."""


class SplitError(DeparturesError):
    """The requested train/hold-out split cannot be built."""


class UnknownPerturbationError(DeparturesError):
    """A perturbation or cell type the model cannot represent."""


class RunError(DeparturesError):
    """A run folder is missing, incomplete, corrupt or incompatible."""


class ConfigError(DeparturesError):
    """A hyper-parameter is out of its valid range."""


class KnowledgeError(DeparturesError):
    """The gene knowledge (shipped GO table or a user's graph/embedding) cannot be used."""
