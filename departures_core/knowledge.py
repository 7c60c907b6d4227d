"""Prior knowledge about perturbed genes: the shipped Gene Ontology table or a user's CSV.

Every source answers the same questions about perturbation labels (``A+B`` combines,
`keys.COMBINATION_DELIMITER`): `resolve`, `terms`, `known`, `unknown`, `similarity`
(shape (n_a, n_b)) and `features` (shape (n, k)). `load` reads ``assets/knowledge/``
(human: org.Hs.eg.db; mouse genes carry their human orthologs' terms); `from_csv` reads a
user's edge list (``gene_a,gene_b[,weight]``) or embedding table (``gene,dim_1,...``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from . import paths
from .errors import ConfigError, DataValidationError, InputFileError, KnowledgeError
from .keys import COMBINATION_DELIMITER

ASSETS = paths.ASSETS / "knowledge"
SPECIES = ("human", "mouse")
_VERSION = re.compile(r"\.\d+$")
_BLOCK = 2048  # rows of `similarity` computed at once: bounds the sparse product's memory


def parts_of(perturbation: str) -> list[str]:
    """The genes of a perturbation label, in order, without repeats or blanks."""
    parts = (p.strip() for p in str(perturbation).split(COMBINATION_DELIMITER))
    return list(dict.fromkeys(p for p in parts if p))


def _key(name: str) -> str:
    """Case-insensitive lookup key; Ensembl IDs lose their version suffix."""
    key = str(name).strip().upper()
    return _VERSION.sub("", key) if key.startswith("ENS") else key


class _Base:
    """What every knowledge source shares; subclasses define `resolve`, `_row` and `terms`."""

    species: str
    source: str

    def known(self, gene: str) -> bool:
        """Whether there is any knowledge about ``gene`` (after `resolve`)."""
        return self._row(gene) is not None

    def perturbation_terms(self, perturbation: str) -> frozenset[str]:
        """Union of the `terms` of the perturbation's parts."""
        return frozenset().union(*(self.terms(p) for p in parts_of(perturbation)))

    def unknown(self, perturbations: Sequence[str]) -> list[str]:
        """The parts of ``perturbations`` without any knowledge, once each, in order."""
        parts = (p for pert in perturbations for p in parts_of(pert))
        return [p for p in dict.fromkeys(parts) if not self.known(p)]

    def _parts_matrix(self, perturbations: Sequence[str], n_cols: int):
        """Indicator of known parts, shape (n, n_cols), and the number of parts of each."""
        rows, cols, n_parts = [], [], np.zeros(len(perturbations))
        for i, pert in enumerate(perturbations):
            parts = parts_of(pert)
            n_parts[i] = len(parts)
            found = {r for r in map(self._row, parts) if r is not None}
            rows += [i] * len(found)
            cols += sorted(found)
        x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), (len(perturbations), n_cols))
        return x, n_parts


class Knowledge(_Base):
    """Gene -> GO term annotations of one species.

    Parameters
    ----------
    species : str
        ``"human"`` or ``"mouse"``.
    source : str
        Short human description of where the annotations come from.
    symbols : sequence of str, length n_genes
        Official gene symbols, one per row of ``indicator``.
    indicator : scipy.sparse matrix, shape (n_genes, n_terms)
        1 where a gene carries a term.
    term_ids : sequence of str, length n_terms
        GO IDs of the columns of ``indicator``.
    names : dict of str to str
        `_key` of a symbol, alias or Ensembl ID -> official symbol.
    """

    def __init__(self, species, source, symbols, indicator, term_ids, names):
        self.species, self.source = species, source
        self.symbols = np.asarray(symbols, dtype=object)
        self.term_ids = np.asarray(term_ids, dtype=object)
        self._m = sparse.csr_matrix(indicator, dtype=np.float64)
        has_terms = np.flatnonzero(np.diff(self._m.indptr))
        self._rows = dict(zip(self.symbols[has_terms], has_terms, strict=True))
        self._names = names

    def __repr__(self) -> str:
        return f"Knowledge({self.species!r}, {len(self._rows)} genes, {len(self.term_ids)} terms)"

    def resolve(self, name: str) -> str | None:
        """Official symbol of a symbol, alias or Ensembl gene ID; None when unknown."""
        return self._names.get(_key(name))

    def _row(self, gene: str) -> int | None:
        return self._rows.get(self.resolve(gene))

    def terms(self, gene: str) -> frozenset[str]:
        """GO term IDs of ``gene`` (resolved first); empty when unknown."""
        row = self._row(gene)
        if row is None:
            return frozenset()
        m = self._m
        return frozenset(self.term_ids[m.indices[m.indptr[row] : m.indptr[row + 1]]])

    def _indicator(self, perturbations: Sequence[str]) -> sparse.csr_matrix:
        """0/1 GO terms of each perturbation (union over parts), shape (n, n_terms)."""
        parts, _ = self._parts_matrix(perturbations, self._m.shape[0])
        out = (parts @ self._m).tocsr()
        out.data[:] = 1.0
        return out

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Jaccard similarity of the perturbations' GO term sets.

        Returns
        -------
        numpy.ndarray, shape (len(a), len(b))
            ``|T_a & T_b| / |T_a | T_b|``; 0 where either side has no terms.
        """
        xa, xb = self._indicator(a), self._indicator(b)
        na, nb = np.asarray(xa.sum(1)).ravel(), np.asarray(xb.sum(1)).ravel()
        out = np.zeros((len(a), len(b)))
        for start in range(0, len(a), _BLOCK):
            stop = min(start + _BLOCK, len(a))
            inter = (xa[start:stop] @ xb.T).toarray()
            union = na[start:stop, None] + nb[None, :] - inter
            np.divide(inter, union, out=out[start:stop], where=union > 0)
        return out

    def feature_terms(self, perturbations: Sequence[str], *, min_count: int = 2) -> np.ndarray:
        """GO IDs of the columns of `features` for the same arguments."""
        return self.term_ids[self._shared(self._indicator(perturbations), min_count)]

    def features(self, perturbations: Sequence[str], *, min_count: int = 2) -> np.ndarray:
        """0/1 indicators of the GO terms at least ``min_count`` perturbations share.

        Returns
        -------
        numpy.ndarray, shape (len(perturbations), n_shared_terms)
            May have no columns. Column names: `feature_terms`.
        """
        x = self._indicator(perturbations)
        return x[:, self._shared(x, min_count)].toarray()

    @staticmethod
    def _shared(x: sparse.csr_matrix, min_count: int) -> np.ndarray:
        if int(min_count) < 1:
            raise ConfigError(f"min_count must be at least 1, got {min_count}.")
        return np.flatnonzero(np.asarray(x.sum(0)).ravel() >= min_count)


def _read(name: str) -> pd.DataFrame:
    path = ASSETS / name
    if not path.is_file():
        raise KnowledgeError(
            f"The shipped knowledge table {path} is missing: rebuild it with "
            "`python scripts/build_knowledge.py` or reinstall the package."
        )
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""], dtype=str)


def _names(symbols: pd.Series, ensembl: pd.DataFrame, alias: pd.DataFrame, rows) -> dict:
    """Lookup key -> symbol: official symbols win over Ensembl IDs, which win over aliases.

    An alias of several genes means the one with GO terms, then the alphabetically first.
    """
    alias = alias.assign(key=alias["alias"].map(_key), bare=~alias["symbol"].isin(rows))
    alias = alias.sort_values(["key", "bare", "symbol"]).drop_duplicates("key")
    names = dict(zip(alias["key"], alias["symbol"], strict=True))
    names.update(zip(ensembl["ensembl_id"].map(_key), ensembl["symbol"], strict=True))
    names.update((_key(s), s) for s in sorted(symbols, reverse=True))
    return names


def _human(include_iea: bool) -> tuple:
    go = _read("human_go.tsv.gz")
    if not include_iea:
        go = go[go["iea_only"] == "0"]
    symbols = _read("human_genes.tsv.gz")["symbol"]
    term_ids = np.sort(go["go_id"].unique())
    row = pd.Index(symbols).get_indexer(go["symbol"])
    col = np.searchsorted(term_ids, go["go_id"])
    m = sparse.csr_matrix((np.ones(len(go)), (row, col)), shape=(len(symbols), len(term_ids)))
    ensembl, alias = _read("human_ensembl.tsv.gz"), _read("human_alias.tsv.gz")
    return symbols, m, term_ids, _names(symbols, ensembl, alias, go["symbol"].unique())


@functools.lru_cache(maxsize=4)
def load(species: str = "human", *, include_iea: bool = True) -> Knowledge:
    """The shipped gene -> GO knowledge of ``species`` (cached; never mutate it).

    Parameters
    ----------
    species : {"human", "mouse"}
    include_iea : bool
        Keep annotations whose only evidence is IEA (electronic, not reviewed by a curator).

    Returns
    -------
    Knowledge
    """
    if species not in SPECIES:
        raise KnowledgeError(f"Unknown species {species!r}: choose one of {SPECIES}.")
    prov = json.loads((ASSETS / "provenance.json").read_text())["human"]
    what = f"{prov['bioconductor_package']}, annotations {prov['go_annotation_date']}"
    if species == "human":
        symbols, m, term_ids, names = _human(include_iea)
        return Knowledge("human", f"Gene Ontology ({what})", symbols, m, term_ids, names)
    human = load("human", include_iea=include_iea)
    mouse = _read("mouse_genes.tsv.gz")
    msym = np.sort(mouse["symbol"].unique())
    pairs = mouse.dropna(subset=["human_symbol"])
    rows = np.searchsorted(msym, pairs["symbol"])
    cols = pd.Index(human.symbols).get_indexer(pairs["human_symbol"])
    shape = (len(msym), len(human.symbols))
    mm = (sparse.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=shape) @ human._m).tocsr()
    mm.data[:] = 1.0
    names = {_key(e): s for e, s in zip(mouse["ensembl_id"], mouse["symbol"], strict=True)}
    names.update((_key(s), s) for s in msym[::-1])
    source = f"Gene Ontology of human orthologs (Ensembl; {what})"
    return Knowledge("mouse", source, msym, mm, human.term_ids, names)


def detect_species(gene_names: Sequence[str]) -> str:
    """``"mouse"`` when more names look mouse than human, else ``"human"``.

    A name votes by exact-case symbol (``TP53`` human, ``Trp53`` mouse) or Ensembl prefix
    (``ENSG`` / ``ENSMUSG``); only when no name votes, case-insensitive matches count.
    """
    names = [str(g).strip() for g in gene_names]
    votes = {}
    for species in SPECIES:
        know, prefix = load(species), "ENSMUSG" if species == "mouse" else "ENSG"
        exact = sum(g.startswith(prefix) or know.resolve(g) == g for g in names)
        votes[species] = (exact, sum(know.resolve(g) is not None for g in names))
    return "mouse" if votes["mouse"] > votes["human"] else "human"


def for_genes(gene_names: Sequence[str], perturbations: Sequence[str] = ()) -> Knowledge:
    """The shipped knowledge of the species of the data's ``var_names`` and perturbations."""
    parts = [p for pert in perturbations for p in parts_of(pert)]
    return load(detect_species([*map(str, gene_names), *parts]))


class _Table(_Base):
    """A user's table: names match case-insensitively; ``labels`` are its spellings."""

    def __init__(self, labels: Sequence[str], source: str):
        self.species, self.source = "user", source
        self.labels = np.asarray(labels, dtype=object)
        self._index = {_key(n): i for i, n in enumerate(self.labels)}

    def resolve(self, name: str) -> str | None:
        """The table's spelling of ``name`` (case-insensitive); None when not in it."""
        row = self._row(name)
        return None if row is None else self.labels[row]

    def _row(self, gene: str) -> int | None:
        return self._index.get(_key(gene))


class EdgeListKnowledge(_Table):
    """A user's gene graph: ``similarity`` of two genes is their edge weight (self: 1).

    Combinations compare by best-match average: each part's best match in the other
    perturbation, averaged over the parts, then over both directions (so ``A+B`` vs
    ``A+B`` is 1 and ``A+B`` vs ``A`` lies between ``A`` vs ``B`` and 1).
    """

    def __init__(self, nodes: Sequence[str], weights: sparse.spmatrix, source: str):
        super().__init__(nodes, source)
        self._w = sparse.csr_matrix(weights)

    def terms(self, gene: str) -> frozenset[str]:
        """The graph neighbours of ``gene`` (the gene itself excluded)."""
        row = self._row(gene)
        if row is None:
            return frozenset()
        nbrs = self._w.indices[self._w.indptr[row] : self._w.indptr[row + 1]]
        return frozenset(self.labels[nbrs[nbrs != row]])

    def _padded(self, perturbations):
        """Known node rows per perturbation, shape (n, k), -1-padded; and parts per row."""
        x, n_parts = self._parts_matrix(perturbations, len(self.labels))
        counts = np.diff(x.indptr)
        idx = np.full((x.shape[0], max(int(counts.max(initial=0)), 1)), -1)
        owner = np.repeat(np.arange(x.shape[0]), counts)
        idx[owner, np.arange(x.nnz) - x.indptr[owner]] = x.indices
        return idx, np.maximum(n_parts, 1)

    @staticmethod
    def _best_match(g: np.ndarray, ia, na, ib) -> np.ndarray:
        """Mean over a's parts of the best match among b's parts, shape (n_a, n_b)."""
        best = np.zeros((g.shape[0], ib.shape[0]))
        for k in range(ib.shape[1]):
            ok = ib[:, k] >= 0
            best[:, ok] = np.maximum(best[:, ok], g[:, ib[ok, k]])
        out = np.zeros((ia.shape[0], ib.shape[0]))
        for k in range(ia.shape[1]):
            ok = ia[:, k] >= 0
            out[ok] += best[ia[ok, k]]
        return out / na[:, None]

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Best-match average edge weight, shape (len(a), len(b)); 0 without knowledge."""
        (ia, na), (ib, nb) = self._padded(a), self._padded(b)
        # only the nodes either side uses: a dense block of the graph stays small
        ua, ub = np.unique(ia[ia >= 0]), np.unique(ib[ib >= 0])
        g = self._w[ua][:, ub].toarray()
        ia = np.where(ia >= 0, np.searchsorted(ua, ia), -1)
        ib = np.where(ib >= 0, np.searchsorted(ub, ib), -1)
        return (self._best_match(g, ia, na, ib) + self._best_match(g.T, ib, nb, ia).T) / 2

    def features(self, perturbations: Sequence[str], *, min_count: int = 2) -> np.ndarray:
        """Mean edge weight of the parts to each node at least ``min_count`` rows reach.

        Returns
        -------
        numpy.ndarray, shape (len(perturbations), n_kept_nodes)
        """
        x, n_parts = self._parts_matrix(perturbations, len(self.labels))
        f = (sparse.diags(1 / np.maximum(n_parts, 1)) @ x @ self._w).tocsr()
        return f[:, Knowledge._shared(f.astype(bool).astype(float), min_count)].toarray()


class EmbeddingKnowledge(_Table):
    """A user's gene embedding: ``similarity`` is the cosine of the perturbations' vectors
    (a combination's vector is the mean of its known parts'), clipped at 0."""

    def __init__(self, genes: Sequence[str], vectors: np.ndarray, source: str):
        super().__init__(genes, source)
        self.vectors = np.asarray(vectors, dtype=np.float64)

    def terms(self, gene: str) -> frozenset[str]:
        """Always empty: an embedding has no discrete terms (use `features`)."""
        return frozenset()

    def features(self, perturbations: Sequence[str], *, min_count: int = 2) -> np.ndarray:
        """Mean embedding of the known parts (zeros without any), shape (n, dim).

        ``min_count`` is accepted for compatibility with `Knowledge.features` and ignored.
        """
        x, _ = self._parts_matrix(perturbations, len(self.labels))
        n_known = np.maximum(np.asarray(x.sum(1)).ravel(), 1)
        return np.asarray(sparse.diags(1 / n_known) @ x @ self.vectors)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine similarity clipped at 0, shape (len(a), len(b)); 0 without knowledge."""
        fa, fb = self.features(a), self.features(b)
        fa = fa / np.maximum(np.linalg.norm(fa, axis=1, keepdims=True), 1e-300)
        fb = fb / np.maximum(np.linalg.norm(fb, axis=1, keepdims=True), 1e-300)
        return np.clip(fa @ fb.T, 0.0, 1.0)


_HOW = (
    "Give either an edge list with a header row and columns gene_a,gene_b[,weight] "
    "(weights finite and >= 0) or an embedding table with a header row, the gene in the "
    "first column and numbers in all others."
)


def _bad(path: Path, what: str) -> DataValidationError:
    return DataValidationError(f"{path.name}: {what}. {_HOW}")


def _numeric(df: pd.DataFrame, path: Path) -> np.ndarray:
    values = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise _bad(
            path, f"column {df.columns[c]!r} row {r + 2} holds {df.iat[r, c]!r}, not a number"
        )
    return values


def _edge_list(genes: pd.Series, df: pd.DataFrame, path: Path) -> EdgeListKnowledge:
    if df.shape[1] > 3 or df.iloc[:, 1].isna().any():
        raise _bad(path, f"column {df.columns[1]!r} is neither all numbers nor all gene names")
    w = _numeric(df.iloc[:, [2]], path).ravel() if df.shape[1] == 3 else np.ones(len(df))
    if (w < 0).any():
        raise _bad(path, f"row {int(np.argmax(w < 0)) + 2} has a negative weight")
    ends = pd.concat([genes, df.iloc[:, 1].str.strip()], ignore_index=True)
    nodes = ends.groupby(ends.map(_key), sort=True).first()
    code = nodes.index.get_indexer(ends.map(_key))
    i, j = code[: len(df)], code[len(df) :]
    edges = pd.DataFrame({"i": np.r_[i, j], "j": np.r_[j, i], "w": np.r_[w, w]})
    edges = edges[edges["i"] != edges["j"]].groupby(["i", "j"], as_index=False)["w"].max()
    n = len(nodes)
    m = sparse.csr_matrix((edges["w"], (edges["i"], edges["j"])), shape=(n, n))
    return EdgeListKnowledge(nodes.to_numpy(), m + sparse.identity(n), f"edge list {path.name}")


def from_csv(path: str | Path) -> EdgeListKnowledge | EmbeddingKnowledge:
    """Read a user's gene knowledge: an edge list or an embedding table (see `_HOW`).

    A file whose second column is all numbers is an embedding, otherwise an edge list
    (duplicate edges keep their largest weight). ``.tsv``/``.txt`` files are tab-separated.

    Raises
    ------
    InputFileError
        The file does not exist.
    DataValidationError
        It is empty, has too few or wrong columns, or non-numeric / negative values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file. Check the path of the knowledge CSV.")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise _bad(path, f"cannot be read as a table ({err})") from err
    if df.shape[1] < 2 or len(df) == 0:
        raise _bad(path, f"has {len(df)} data rows and {df.shape[1]} columns")
    if df.iloc[:, 0].isna().any():
        raise _bad(path, f"row {int(np.argmax(df.iloc[:, 0].isna())) + 2} has no gene name")
    genes = df.iloc[:, 0].str.strip()
    if not pd.to_numeric(df.iloc[:, 1], errors="coerce").notna().all():
        return _edge_list(genes, df, path)
    dup = genes[genes.map(_key).duplicated()]
    if len(dup):
        raise _bad(path, f"gene {dup.iloc[0]!r} has more than one row; keep one row per gene")
    return EmbeddingKnowledge(genes, _numeric(df.iloc[:, 1:], path), f"embedding {path.name}")
