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

Output: ``OUT_DIR/study=<id>/part-<k>.parquet`` (snappy) and ``OUT_DIR/_manifest.json`` (rows per finished
study, ``complete: true`` when all are done), the input's metadata columns plus:

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
import os
import shutil
from collections.abc import Callable, Container, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from cellgym.predictors.base import DataSpecError, check_genes
from cellgym.predictors.base._atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import Gem1Base

__all__ = ["MANIFEST", "describe_output", "read_manifest", "read_studies", "run_task", "torn_parts", "write_table"]

log = logging.getLogger(__name__)
GENES_KEY = b"genes"
STUDY = "study"
MANIFEST = "_manifest.json"  # completion record of an output folder (the leading _ hides it from dataset readers)
MANIFEST_FORMAT = "cellgym.predict/1"


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


def list_studies(ds: pds.Dataset) -> list[str]:
    """The sorted study names of a dataset (``["all"]`` when it has no ``study`` column)."""
    if STUDY not in ds.schema.names:
        return ["all"]
    return sorted({str(v) for v in pc.unique(ds.to_table(columns=[STUDY]).column(STUDY)).to_pylist()})


def read_studies(path: str | Path, batch_size: int = 65_536, *,
                 skip: Container[str] = ()) -> Iterator[tuple[str, pd.DataFrame, np.ndarray | None]]:
    """Yield ``(study, metadata DataFrame, counts (n, G) float32 or None)`` one study at a time.

    Studies in ``skip`` are neither read nor yielded.

    Only one study's rows are in memory at once; within a study, record batches of ``batch_size``
    rows are read and concatenated.
    """
    ds = _dataset(path)
    names = ds.schema.names
    for study in list_studies(ds):
        if study in skip:
            continue
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


def _output_table(adata: AnnData, task: str) -> pa.Table:
    """A task's output AnnData as one Arrow table (obs columns, ``counts``, layers, obsm; genes in the metadata)."""
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
    return pa.table(columns).replace_schema_metadata(
        {GENES_KEY: json.dumps([str(x) for x in adata.var_names]).encode(), b"task": task.encode()}
    )


def _write_parts(table: pa.Table, folder: Path, part: int, rows_per_file: int) -> int:
    """Write ``table`` as ``folder/part-<k>.parquet`` files of ``rows_per_file`` rows, each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, table.num_rows, rows_per_file):
        chunk = table.slice(start, rows_per_file)
        atomic_write(folder / f"part-{part:05d}.parquet", lambda tmp, c=chunk: pq.write_table(c, tmp, compression="snappy"))
        part += 1
    return part


def write_table(adata: AnnData, out_dir: str | Path, study: str, task: str, *, part: int, rows_per_file: int) -> int:
    """Write a task's output AnnData as ``study=<study>/part-<k>.parquet`` files; returns the next part index.

    Each file is written under a temporary name (``.part-<k>.parquet.tmp``, which dataset readers skip) and
    renamed into place, so a kill never leaves a part without its footer.
    """
    return _write_parts(_output_table(adata, task), Path(out_dir) / f"{STUDY}={study}", part, rows_per_file)


# ------------------------------------------------------------------------------------ output folder state
def torn_parts(folder: str | Path) -> list[Path]:
    """Parquet files under ``folder`` whose footer cannot be read (written by a process that was killed)."""
    torn = []
    for file in sorted(Path(folder).rglob("*.parquet")):
        try:
            pq.read_metadata(file)
        except (pa.ArrowInvalid, OSError):
            torn.append(file)
    return torn


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The completion manifest of a ``cellgym predict`` output folder, or None when it has none."""
    file = Path(out_dir) / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataSpecError(f"{file} is not valid JSON ({exc}); pass --overwrite to write the output again.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataSpecError(f"{file} is not a cellgym predict manifest ({MANIFEST_FORMAT}); pass --overwrite.")
    return manifest


def _study_rows(folder: Path) -> int | None:
    """Rows in the part files of a finished study folder, or None when one of them is torn."""
    try:
        return sum(pq.read_metadata(f).num_rows for f in folder.glob("part-*.parquet"))
    except (pa.ArrowInvalid, OSError):
        return None


def verified_studies(out_dir: str | Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Studies the manifest records as complete whose folder still holds exactly their rows, readable."""
    out = Path(out_dir)
    done = {}
    for study, entry in manifest.get("studies", {}).items():
        folder = out / f"{STUDY}={study}"
        if folder.is_dir() and _study_rows(folder) == entry["rows"]:
            done[study] = int(entry["rows"])
    return done


def describe_output(out_dir: str | Path) -> str:
    """What an existing, non-empty output folder holds, in words (complete, incomplete, torn parts)."""
    out = Path(out_dir)
    torn = torn_parts(out)
    torn_note = f"; {len(torn)} torn part file(s) without a Parquet footer, e.g. {str(torn[0])!r}" if torn else ""
    manifest = read_manifest(out)
    if manifest is None:
        n = sum(1 for _ in out.rglob("*.parquet"))
        return f"{n} Parquet file(s) and no completion manifest ({MANIFEST}){torn_note}"
    rows = sum(e["rows"] for e in manifest["studies"].values())
    if manifest.get("complete"):
        return f"a complete {manifest['task']} output ({rows} rows in {len(manifest['studies'])} studies){torn_note}"
    return (f"an INCOMPLETE {manifest['task']} output ({len(manifest['studies'])} studies finished, {rows} rows; "
            f"the run was interrupted){torn_note}")


def _is_empty(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def _clear_output(out: Path) -> None:
    """Remove what ``cellgym predict`` writes into ``out`` (study folders, staging folders, parts, manifest)."""
    for p in [*out.glob(f"{STUDY}=*"), *out.glob(f".{STUDY}=*")]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in [*out.glob("*.parquet"), *out.glob(".*.tmp"), out / MANIFEST]:
        p.unlink(missing_ok=True)


def prepare_output(out_dir: str | Path, settings: dict[str, Any], if_exists: str,
                   echo: Callable[[str], None] | None = None) -> dict[str, int]:
    """Make ``out_dir`` ready for a run with ``settings``; returns the studies already complete (rows each).

    ``if_exists``: ``"error"`` refuses a non-empty folder (one line saying what it holds), ``"overwrite"``
    removes what an earlier run wrote, ``"resume"`` keeps the studies its manifest records as complete (and
    whose parts are intact) and removes the rest.
    """
    out = Path(out_dir)
    if if_exists not in ("error", "overwrite", "resume"):
        raise DataSpecError(f"if_exists: expected 'error', 'overwrite' or 'resume', got {if_exists!r}.")
    if out.exists() and not out.is_dir():
        raise DataSpecError(f"output {str(out)!r} is a file; pass a folder.")
    done: dict[str, int] = {}
    if not _is_empty(out):
        if if_exists == "error":
            raise DataSpecError(f"output folder {str(out)!r} already holds {describe_output(out)}. Pass --overwrite to "
                                "replace it, --resume to finish an interrupted run, or another --output.")
        if if_exists == "overwrite":
            _clear_output(out)
        else:
            manifest = read_manifest(out)
            if manifest is None:
                raise DataSpecError(f"cannot resume into {str(out)!r}: it holds {describe_output(out)}, so which studies "
                                    "are complete is unknown. Pass --overwrite to write it again.")
            theirs = {k: manifest.get("settings", {}).get(k) for k in settings}
            if theirs != settings:
                diff = {k: (theirs[k], settings[k]) for k in settings if theirs[k] != settings[k]}
                raise DataSpecError(f"cannot resume into {str(out)!r}: it was written with other options "
                                    f"(option: (then, now)) {diff}. Rerun with the same options, or pass --overwrite.")
            done = verified_studies(out, manifest)
            redo = sorted(set(manifest["studies"]) - set(done))
            torn = torn_parts(out)
            for p in [*out.glob(f"{STUDY}=*"), *out.glob(f".{STUDY}=*")]:
                if p.name.split("=", 1)[1] not in done:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            if echo and (redo or torn):
                echo(f"resume: {len(torn)} torn part file(s) removed; {len(redo)} recorded studies redone ({redo[:5]}) "
                     "because their parts were missing or damaged.")
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, settings, done, complete=False)
    return done


def _write_manifest(out: Path, settings: dict[str, Any], studies: dict[str, int], *, complete: bool) -> None:
    manifest = {"format": MANIFEST_FORMAT, "task": settings["task"], "settings": settings, "complete": complete,
                "rows": int(sum(studies.values())), "studies": {s: {"rows": int(n)} for s, n in sorted(studies.items())}}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


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
    if_exists: str = "error",
    echo: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Run a GEM-1 task on a Parquet dataset, study by study; returns rows per study (all studies).

    ``batch_size`` rows go through the model at once (``ref_predict_perturbation`` pairs a batch's
    perturbed rows with all of its study's controls); ``output_batch_size`` rows go into one file.

    Crash safety: each study is written into a hidden staging folder (``.study=<id>.tmp/``, skipped by
    dataset readers) and renamed to ``study=<id>/`` when it is complete, then recorded in ``_manifest.json``
    (rows per study; ``complete: true`` once every study is done). A killed run therefore leaves only whole
    studies visible and a manifest that says it is incomplete. A non-empty ``output_dir`` is refused unless
    ``if_exists`` is ``"overwrite"`` or ``"resume"`` (skip the studies already complete, redo the others).
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
    settings = {"task": task, "mode": mode, "replicates": replicates, "fixed_total_count": fixed_total_count,
                "seed": seed, "input": str(Path(input_dir).resolve()), "genes": len(model.genes)}
    written = prepare_output(out, settings, if_exists, echo)
    key = model.spec.perturbation_key
    order = {study: k for k, study in enumerate(list_studies(ds))}  # study k is seeded seed + k, resumed or not
    for study, meta, x in read_studies(input_dir, skip=set(written)):
        seed_s = None if seed is None else seed + order[study]
        staging = out / f".{STUDY}={study}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        n_rows, part = 0, 0
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
            part = _write_parts(_output_table(res, task), staging, part, output_batch_size)
            n_rows += res.n_obs
        final = out / f"{STUDY}={study}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        written[study] = n_rows
        _write_manifest(out, settings, written, complete=False)
        log.info("study %s: %d rows", study, n_rows)
    _write_manifest(out, settings, written, complete=True)
    return dict(sorted(written.items()))
