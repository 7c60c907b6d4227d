"""The shipped gene -> GO knowledge and user-supplied graphs / embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from departures_core import knowledge
from departures_core.errors import ConfigError, DataValidationError, InputFileError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "perturbench_devel_norman19_mcfaline23.h5ad"


@pytest.fixture(scope="module")
def human():
    return knowledge.load("human")


@pytest.fixture(scope="module")
def mouse():
    return knowledge.load("mouse")


def test_resolve_symbols_aliases_and_ensembl(human):
    assert human.resolve("MAP3K21") == "MAP3K21"
    assert human.resolve("map3k21") == "MAP3K21"
    assert human.resolve("KIAA1804") == "MAP3K21"  # previous symbol
    assert human.resolve("MLK4") == "MAP3K21"  # NCBI alias
    assert human.resolve("ENSG00000141510") == "TP53"
    assert human.resolve("ENSG00000141510.12") == "TP53"
    assert human.resolve(" TP53 ") == "TP53"
    # DNA damage response, signal transduction by p53 class mediator
    assert human.known("TP53") and "GO:0006977" in human.terms("TP53")
    assert "org.Hs.eg.db" in human.source and human.species == "human"


def test_unknown_names(human):
    assert human.resolve("NOT_A_GENE_XYZ") is None
    assert human.terms("NOT_A_GENE_XYZ") == frozenset()
    assert not human.known("NOT_A_GENE_XYZ")
    assert human.unknown(["TP53", "NOT_A_GENE_XYZ+KLF1", "NOT_A_GENE_XYZ"]) == ["NOT_A_GENE_XYZ"]


def test_official_symbol_wins_over_alias(human):
    # every official symbol with terms resolves to itself, even when it is someone's alias
    symbols = list(human._rows)
    assert all(human.resolve(s) == s for s in symbols)


def test_similarity_ranks_paralogs_first(human):
    s = human.similarity(["MAP2K3"], ["MAP2K6", "HK2", "NIT1", "MAP2K3"])[0]
    assert s[0] > s[1] and s[0] > s[2]
    assert s[3] == pytest.approx(1.0)
    assert np.all((s >= 0) & (s <= 1))


def test_similarity_of_combinations_uses_union(human):
    a, b = human.terms("MAP2K3"), human.terms("HK2")
    union = a | b
    assert human.perturbation_terms("MAP2K3+HK2") == union
    expected = len(union & a) / len(union | a)
    s = human.similarity(["MAP2K3+HK2", "HK2+MAP2K3"], ["MAP2K3", "MAP2K3+HK2"])
    assert s[0, 0] == pytest.approx(expected)
    assert s[0, 0] < 1.0
    np.testing.assert_allclose(s[:, 1], 1.0)
    # a row without any knowledge is all zeros, never NaN
    z = human.similarity(["NOT_A_GENE_XYZ"], ["MAP2K3", "NOT_A_GENE_XYZ"])
    np.testing.assert_array_equal(z, 0.0)


def test_similarity_matches_set_jaccard(human):
    genes = ["MAP2K3", "MAP2K6", "HK2", "NIT1", "KLF1", "CEBPE", "TP53"]
    s = human.similarity(genes, genes)
    for i, g in enumerate(genes):
        for j, h in enumerate(genes):
            a, b = human.terms(g), human.terms(h)
            assert s[i, j] == pytest.approx(len(a & b) / len(a | b))
    np.testing.assert_allclose(s, s.T)


def test_features_shape_and_min_count(human):
    perts = ["MAP2K3", "MAP2K6", "HK2", "NOT_A_GENE_XYZ"]
    f1 = human.features(perts, min_count=1)
    f2 = human.features(perts)
    assert f1.shape == (4, len(human.perturbation_terms("MAP2K3+MAP2K6+HK2")))
    assert f2.shape[0] == 4 and 0 < f2.shape[1] < f1.shape[1]
    assert np.all(f2.sum(0) >= 2)
    assert set(np.unique(f1)) <= {0.0, 1.0}
    np.testing.assert_array_equal(f1[3], 0.0)
    assert set(human.feature_terms(perts)) <= human.perturbation_terms("MAP2K3+MAP2K6")
    assert human.features(["MAP2K3"], min_count=2).shape == (1, 0)
    with pytest.raises(ConfigError):
        human.features(perts, min_count=0)


def test_mouse_symbols_and_species_detection(mouse):
    assert mouse.resolve("Trp53") == "Trp53"
    assert mouse.resolve("ENSMUSG00000059552.4") == "Trp53"
    assert mouse.known("Trp53") and mouse.known("Actb")
    # a one-to-one ortholog carries exactly the human gene's terms
    assert mouse.terms("Trp53") == knowledge.load("human").terms("TP53")
    assert mouse.resolve("TP53") is None  # mouse resolves mouse names only
    assert knowledge.detect_species(["Actb", "Trp53", "Gapdh", "Cd8b1", "Fcgr4"]) == "mouse"
    assert knowledge.detect_species(["ACTB", "TP53", "GAPDH"]) == "human"
    assert knowledge.detect_species(["ENSMUSG00000059552", "ENSMUSG00000029580"]) == "mouse"
    assert knowledge.for_genes(["Actb", "Gapdh"], ["Trp53"]).species == "mouse"
    assert knowledge.load("mouse") is mouse  # cached


def test_iea_can_be_dropped(human):
    curated = knowledge.load("human", include_iea=False)
    assert curated.terms("TP53") <= human.terms("TP53")
    assert sum(map(len, map(curated.terms, ["TP53", "HK2"]))) < sum(
        map(len, map(human.terms, ["TP53", "HK2"]))
    )


def test_shipped_tables_stay_small():
    files = [p for p in knowledge.ASSETS.iterdir() if p.is_file()]
    assert {"human_go.tsv.gz", "mouse_genes.tsv.gz", "README.md"} <= {p.name for p in files}
    assert sum(p.stat().st_size for p in files) < 10 * 1024 * 1024


def test_demo_perturbations_are_known_or_reported(human):
    ad = pytest.importorskip("anndata")
    obs = ad.read_h5ad(DEMO, backed="r").obs
    labels = sorted(set(obs["condition"].astype(str)) - {"control"})
    genes = sorted({g for label in labels for g in label.split("+")})
    know = knowledge.for_genes([], labels)
    assert know.species == "human"
    missing = know.unknown(labels)
    assert set(missing) == {g for g in genes if not know.known(g)}
    assert len(genes) - len(missing) >= 28


def test_edge_list_round_trip(tmp_path):
    path = tmp_path / "graph.csv"
    path.write_text("gene_a,gene_b,weight\nA,B,0.5\nB,C,0.2\nb,a,0.8\nD,E,1\n")
    know = knowledge.from_csv(path)
    assert know.resolve("a") == "A" and know.resolve("Z") is None
    assert know.terms("B") == frozenset({"A", "C"})
    s = know.similarity(["A", "A", "A+B", "Z"], ["A", "B", "A+B", "A"])
    assert s[0, 0] == 1.0 and s[1, 1] == pytest.approx(0.8)  # duplicate edge: max
    assert s[2, 2] == pytest.approx(1.0)
    assert 0.8 < s[2, 0] < 1.0  # best-match average of A+B vs A
    np.testing.assert_array_equal(s[3], 0.0)
    assert know.unknown(["A+Z", "Q"]) == ["Z", "Q"]
    f = know.features(["A", "B", "D"], min_count=2)
    assert f.shape == (3, 2)  # A and B are reached by both A and B rows; D only by itself
    unweighted = tmp_path / "plain.tsv"
    unweighted.write_text("gene_a\tgene_b\nA\tB\n")
    assert knowledge.from_csv(unweighted).similarity(["A"], ["B"])[0, 0] == 1.0


def test_embedding_round_trip(tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text("gene,d1,d2\nA,1,0\nB,1,1\nC,-1,0\n")
    know = knowledge.from_csv(path)
    s = know.similarity(["A", "A", "A", "A+C", "Z"], ["A", "B", "C", "B", "A"])
    np.testing.assert_allclose(s[:, :3][0], [1.0, 1 / np.sqrt(2), 0.0])
    assert s[3, 0] == 0.0  # mean of A and C is the zero vector
    np.testing.assert_array_equal(s[4], 0.0)
    np.testing.assert_allclose(know.features(["A+B", "Z"]), [[1.0, 0.5], [0.0, 0.0]])
    assert know.known("b") and not know.known("Z") and know.terms("A") == frozenset()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "cannot be read"),
        ("gene_a,gene_b\n", "0 data rows"),
        ("gene\nA\nB\n", "1 columns"),
        ("gene_a,gene_b,weight\nA,B,high\n", "not a number"),
        ("gene_a,gene_b,weight\nA,B,-1\n", "negative weight"),
        ("gene,d1,d2\nA,1,x\n", "not a number"),
        ("gene,d1\nA,1\na,2\n", "more than one row"),
        ("a,b,c,d\nA,B,C,D\n", "neither all numbers"),
    ],
)
def test_bad_csv_files_say_what_is_wrong(tmp_path, text, needle):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataValidationError, match=needle) as err:
        knowledge.from_csv(path)
    assert "gene_a,gene_b" in str(err.value)  # the message says how to fix it


def test_missing_csv_file(tmp_path):
    with pytest.raises(InputFileError):
        knowledge.from_csv(tmp_path / "nope.csv")
