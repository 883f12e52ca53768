"""Streaming Parquet IO for the GEM-1 inference tasks (``cellgym predict``), one study at a time.

Schema
------
Input: a Parquet dataset (a folder; Hive-partitioned by ``study=<id>/`` or not), one row per sample:

============================ =================== =========================================================
column                       type                meaning
============================ =================== =========================================================
``study``                    partition / string  the study; rows are processed one study at a time (all
                                                 rows form study ``all`` when absent)
metadata columns             string / numeric    the model's metadata groups (technical, biological,
                                                 perturbation, numeric) and the perturbation column
``counts``                   list<float32>       expression of G genes, in the order of the schema
                                                 metadata key ``genes`` (a JSON list); needed by
                                                 ``ref_predict_perturbation`` and ``classify_samples``
``total_count`` (optional)   numeric             library size of each sample
============================ =================== =========================================================

Output: ``OUT_DIR/study=<id>/part-<k>.parquet`` (snappy), the input's metadata columns plus:

- ``counts`` list<float32> (G): predicted counts (reconstructed counts for ``classify_samples``);
- ``replicate`` int64 for the generative tasks;
- ``de_pred`` list<float32> (G): predicted log-fold changes (``ref_predict_perturbation``,
  ``predict_perturbation``);
- ``pred_<column>`` string and ``prob_<column>`` list<float32> per classifier, and ``z_technical``,
  ``z_biological``, ``z_perturbation`` list<float32> latents (``classify_samples``);

with schema metadata ``genes`` (JSON list of the G genes) and ``task``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from cellgym.predictors.base import DataSpecError, check_genes

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import Gem1Base

__all__ = ["read_studies", "run_task", "write_table"]

log = logging.getLogger(__name__)
GENES_KEY = b"genes"
STUDY = "study"


def _dataset(path: str | Path) -> pds.Dataset:
    path = Path(path)
    if not path.exists():
        raise DataSpecError(f"no Parquet input at {str(path)!r}; expected a folder (or file) of Parquet files.")
    try:
        return pds.dataset(path, format="parquet", partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataSpecError(f"{str(path)!r} is not a readable Parquet dataset ({exc}).") from exc


def dataset_genes(ds: pds.Dataset) -> list[str] | None:
    """The gene list stored in the schema metadata (key ``genes``), or None."""
    meta = ds.schema.metadata or {}
    if GENES_KEY not in meta:
        return None
    return list(json.loads(meta[GENES_KEY]))


def read_studies(path: str | Path, batch_size: int = 65_536) -> Iterator[tuple[str, pd.DataFrame, np.ndarray | None]]:
    """Yield ``(study, metadata DataFrame, counts (n, G) float32 or None)`` one study at a time.

    Only one study's rows are in memory at once; within a study, record batches of ``batch_size``
    rows are read and concatenated.
    """
    ds = _dataset(path)
    names = ds.schema.names
    if STUDY in names:
        studies = sorted({str(v) for v in pc.unique(ds.to_table(columns=[STUDY]).column(STUDY)).to_pylist()})
    else:
        studies = ["all"]
    for study in studies:
        filt = (pc.field(STUDY).cast(pa.string()) == study) if STUDY in names else None
        metas, counts = [], []
        for batch in ds.to_batches(filter=filt, batch_size=batch_size):
            df = batch.drop_columns([c for c in ("counts", STUDY) if c in batch.schema.names]).to_pandas()
            metas.append(df)
            if "counts" in batch.schema.names:
                col = batch.column("counts")
                flat = col.flatten().to_numpy(zero_copy_only=False)
                counts.append(flat.reshape(len(batch), -1).astype(np.float32) if len(batch) else np.zeros((0, 0), np.float32))
        meta = pd.concat(metas, ignore_index=True) if metas else pd.DataFrame()
        x = np.concatenate(counts) if counts else None
        yield study, meta, x


def write_table(adata: AnnData, out_dir: str | Path, study: str, task: str, *, part: int, rows_per_file: int) -> int:
    """Write a task's output AnnData as ``study=<study>/part-<k>.parquet`` files; returns the next part index."""
    folder = Path(out_dir) / f"{STUDY}={study}"
    folder.mkdir(parents=True, exist_ok=True)
    n = adata.n_obs
    columns: dict[str, Any] = {}
    for c in adata.obs.columns:
        columns[str(c)] = pa.array(adata.obs[c].to_numpy().tolist() if adata.obs[c].dtype == object else adata.obs[c].to_numpy())

    def lists(m: np.ndarray) -> pa.Array:
        m = np.ascontiguousarray(m, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1)), m.shape[1]).cast(pa.list_(pa.float32()))

    columns["counts"] = lists(np.asarray(adata.X))
    for k, v in adata.layers.items():
        columns[k] = lists(np.asarray(v))
    for k, v in adata.obsm.items():
        columns[k] = lists(np.asarray(v))
    table = pa.table(columns).replace_schema_metadata(
        {GENES_KEY: json.dumps([str(x) for x in adata.var_names]).encode(), b"task": task.encode()}
    )
    for start in range(0, max(n, 1), rows_per_file):
        if n == 0:
            break
        pq.write_table(table.slice(start, rows_per_file), folder / f"part-{part:05d}.parquet", compression="snappy")
        part += 1
    return part


def run_task(
    model: Gem1Base,
    task: str,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    mode: str = "mean",
    batch_size: int = 4096,
    output_batch_size: int = 65_536,
    replicates: int = 1,
    fixed_total_count: float | None = None,
    seed: int | None = None,
) -> dict[str, int]:
    """Run a GEM-1 task on a Parquet dataset, study by study; returns rows written per study.

    ``batch_size`` rows go through the model at once (``ref_predict_perturbation`` pairs a batch's
    perturbed rows with all of its study's controls); ``output_batch_size`` rows go into one file.
    Writing into a non-empty ``output_dir`` warns and appends new part files.
    """
    from anndata import AnnData

    from ._model import TASKS

    if task not in TASKS:
        raise DataSpecError(f"unknown task {task!r}; expected one of {list(TASKS)}.")
    if batch_size < 1 or output_batch_size < 1:
        raise DataSpecError(f"batch sizes must be >= 1, got {batch_size} and {output_batch_size}.")
    ds = _dataset(input_dir)
    needs_counts = task in ("ref_predict_perturbation", "classify_samples")
    genes = dataset_genes(ds)
    if needs_counts:
        if "counts" not in ds.schema.names or genes is None:
            raise DataSpecError(
                f"task {task!r} needs a 'counts' list column and the gene list in the schema metadata key 'genes'; "
                f"the input has columns {ds.schema.names} and {'no' if genes is None else len(genes)} genes. "
                "Write it with cellgym.predictors.gem1.write_table or add them."
            )
        check_genes(model.genes, genes)
    out = Path(output_dir)
    if out.exists() and any(out.rglob("*.parquet")):
        warnings.warn(f"output folder {str(out)!r} is not empty; appending new part files to it.", stacklevel=2)
    written: dict[str, int] = {}
    key = model.spec.perturbation_key
    for study, meta, x in read_studies(input_dir):
        folder = out / f"{STUDY}={study}"
        part = len(list(folder.glob("part-*.parquet"))) if folder.exists() else 0
        seed_s = None if seed is None else seed + len(written)
        written[study] = 0
        if task == "ref_predict_perturbation":
            is_ctrl = meta[key].astype(str).to_numpy() == model.spec.control
            ctrl_rows, pert_rows = np.flatnonzero(is_ctrl), np.flatnonzero(~is_ctrl)
            chunks = [np.concatenate([ctrl_rows, pert_rows[s : s + batch_size]]) for s in range(0, len(pert_rows), batch_size)]
        else:
            chunks = [np.arange(s, min(s + batch_size, len(meta))) for s in range(0, len(meta), batch_size)]
        for rows in chunks:
            obs = meta.iloc[rows].reset_index(drop=True)
            if task == "predict_expression":
                res = model.predict_expression(obs, mode=mode, replicates=replicates, fixed_total_count=fixed_total_count, seed=seed_s)
            elif task == "predict_perturbation":
                res = model.predict_perturbation(obs, mode=mode, replicates=replicates, fixed_total_count=fixed_total_count, seed=seed_s)
            else:
                obs.index = obs.index.astype(str)
                adata = AnnData(X=x[rows], obs=obs, var=pd.DataFrame(index=pd.Index(model.genes, dtype=str)))
                if task == "classify_samples":
                    res = model.classify_samples(adata)
                else:
                    res = model.ref_predict_perturbation(adata, mode=mode, replicates=replicates,
                                                         fixed_total_count=fixed_total_count, seed=seed_s)
            part = write_table(res, out, study, task, part=part, rows_per_file=output_batch_size)
            written[study] += res.n_obs
        log.info("study %s: %d rows", study, written[study])
    return written
