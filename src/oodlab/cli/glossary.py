"""The vocabulary of oodlab's CLI and Python API: one word per concept, one meaning per flag.

Every CLI option is the keyword argument of the same name (``--chunk-rows`` -> ``chunk_rows``), with
one exception: a repeatable option is the singular of its plural keyword (``--eval-store NAME=STORE``
-> ``eval_stores``). Each keyword has one meaning in every command that takes it, and one default
where it has a fixed one (``None`` means "derived from the model, the data or another argument").
:data:`GLOSSARY` lists them all; ``docs/conventions.md`` shows the same table and
``tests/test_cli.py`` checks that both agree with every command's options.

Named inputs are always ``NAME=PATH`` and repeatable: eval sets (``--eval-store``, ``--eval-data``,
``--predictions``), references (``--reference-store``), thresholds and dataset specs. Names become
file names, so they follow :func:`oodlab.utils.names.check_name`.
"""

from __future__ import annotations

#: keyword -> (flag, meaning)
GLOSSARY: dict[str, tuple[str, str]] = {
    # -- what a path is ------------------------------------------------------------------------
    "out": ("--out", "the output folder of the stage (resumed when it holds an unfinished run with the same arguments)"),
    "data": ("--data", "image data: webdataset shards (tars, folders of tars, quoted brace patterns), ImageFolder roots, images or .txt lists"),
    "train_data": ("--train-data", "the image data a model is trained on (webdataset shards of image-caption pairs)"),
    "eval_data": ("--eval-data", "NAME=PATH of a named eval set's image data (repeat): ImageFolder, DomainNet root or list"),
    "store": ("--store", "an embedding store (clip-retrieval layout, optionally with oodlab.json)"),
    "train_store": ("--train-store", "the embedding store of the training set (the pool, LAION)"),
    "eval_stores": ("--eval-store", "NAME=STORE of a named eval set's embedding store (repeat)"),
    "reference_stores": ("--reference-store", "NAME=STORE of the reference training set (ImageNet-train), whose nearest-neighbour similarity becomes each eval sample's threshold"),
    "threshold_files": ("--threshold-file", "NAME=FILE: a parquet (key, threshold) of eval set NAME (repeat)"),
    "neighbors": ("--neighbors", "a neighbours folder: the output of `oodlab neighbors`"),
    "keys": ("--keys", "a key list: a parquet with a 'key' column (kept.parquet) or a .txt with one key per line"),
    "keep_from": ("--keep-from", "a key list: only its keys are considered"),
    "like": ("--like", "a key list whose length is the size to draw"),
    "index": ("--index", "an index folder written by `oodlab index build`"),
    "predictions": ("--predictions", "NAME=FILE: per-sample predictions (key, correct) of eval set NAME (repeat)"),
    "checkpoint": ("--checkpoint", "weights: a file, an open_clip model folder, or an `oodlab train` run folder"),
    "full_run": ("--full-run", "an existing `oodlab train` run reused for the full pool's row"),
    "full_runs": ("--full-runs", "an experiment folder whose runs/full/seed-{s} (same configuration) are reused for the full pool's row"),
    "labels": ("--labels", "a label file: parquet or CSV with columns key and label (natural, rendition or ambiguous)"),
    "head": ("--head", "a domain classifier: the output folder of `oodlab domains train`"),
    "thresholds": ("--thresholds", "certified per-class thresholds: the output folder of `oodlab domains calibrate`"),
    "datasets": ("--dataset", "NAME=FOLDER: a named dataset's domain predictions, the output of `oodlab domains predict` (repeat)"),
    "domain_predictions": ("--domain-predictions", "domain predictions: the output folder of `oodlab domains predict`"),
    "domain": ("--domain", "a domain: natural or rendition"),
    "strict": ("--strict", "use the calibrated (strict) labels instead of the argmax"),
    "words": ("--word", "a domain word matched as a whole word in captions (repeat; default: the built-in list)"),
    "sample": ("--sample", "how many images to sample"),
    "natural": ("--natural", "a key list of natural samples (from `oodlab domains subset --domain natural`)"),
    "rendition": ("--rendition", "a key list of renditions (from `oodlab domains subset --domain rendition`)"),
    "total": ("--total", "the fixed size of each ratio mixture (and of the natural set of the added-renditions mixtures)"),
    "ratios": ("--ratio", "a rendition:natural ratio of a fixed-size mixture, e.g. 1:1 (repeat)"),
    "additions": ("--addition", "a number of renditions added to the natural set, one mixture each (repeat)"),
    # -- which part of an input ------------------------------------------------------------------
    "eval_sets": ("--eval-set", "the name of an eval set inside a neighbours folder (repeat; default: all)"),
    "key_column": ("--key-column", "the metadata column holding sample keys (default: the store's)"),
    "group_column": ("--group-column", "the metadata column with ground-truth duplicate groups"),
    "specs": ("--spec", "NAME=SPEC: how eval set NAME is read, when NAME is not a spec's name (repeat)"),
    "training_sets": ("--training-set", "a training set of an experiment (repeat; default: all)"),
    "stages": ("--stage", "a stage of the demo (repeat; default: all)"),
    # -- models and numerics ---------------------------------------------------------------------
    "model": ("--model", "an open_clip architecture or an oodlab tiny config"),
    "device": ("--device", "cpu or cuda[:i]"),
    "precision": ("--precision", "numeric precision of the model: fp32, bf16 or fp16"),
    "screen": ("--screen", "precision of the exact pass's candidate screen: auto (the faster on this machine, timed once), bf16 or fp32; results are exact with any"),
    "batch_size": ("--batch-size", "samples per forward pass (inference) or per optimiser step (training)"),
    "chunk_rows": ("--chunk-rows", "rows read at a time: bounds memory"),
    "seed": ("--seed", "the seed of every random choice of the stage"),
    "seeds": ("--seeds", "training seeds per training set (seed, seed+1, ...): tables give the mean and 95% intervals over them"),
    "task": ("--task", "what the domain classifier separates: 3-class, natural-v-rest or rendition-v-rest"),
    "val_share": ("--val-share", "fraction of the labelled samples held out to choose the model"),
    "target": ("--target", "the precision to certify"),
    "confidence": ("--confidence", "the probability with which a certified bound holds"),
    # -- how much, how many ------------------------------------------------------------------------
    "k": ("--k", "neighbours per query"),
    "workers": ("--workers", "worker processes for the stage's data work (decoding, copying, generating); 0: in the main process"),
    "trainer": ("--trainer", "what trains the model: auto (memory for CPU runs whose decoded images fit in 2 GiB, else open_clip), open_clip (open_clip's trainer) or memory (data decoded once, same model, loss and schedule)"),
    "threads": ("--threads", "compute threads of the trainer (default: all cores)"),
    "parallel": ("--parallel", "training runs side by side"),
    "overwrite": ("--overwrite", "delete the output folder first and start afresh (default: resume, or do nothing when complete)"),
    "verify": ("--verify", "re-read what was written and check it against the plan"),
    # -- stage parameters ---------------------------------------------------------------------------
    "preset": ("--preset", "the synthetic world: laion (LAION-like), default (high contamination), small or tiny"),
    "rendition_share": ("--rendition-share", "share of renditions (non-real domains) in the pool"),
    "duplicate_share": ("--duplicate-share", "share of planted near-duplicates in the pool"),
    "text": ("--text", "also embed the captions"),
    "images_per_part": ("--images-per-part", "images per store part for folders and lists (shards: one part each)"),
    "norm_tolerance": ("--norm-tolerance", "allowed |norm - 1| of a stored row"),
    "factory": ("--factory", "a faiss index_factory string"),
    "memory_gb": ("--memory-gb", "memory the index may take, GiB"),
    "recall_queries": ("--recall-queries", "queries sampled to measure recall@k against exact search (0: skip)"),
    "nprobe": ("--nprobe", "IVF lists visited per query"),
    "ef_search": ("--ef-search", "HNSW search breadth"),
    "bins": ("--bins", "number of similarity bins"),
    "bin_edges": ("--bin-edge", "an explicit bin edge (repeat, increasing; replaces --bins)"),
    "binning": ("--binning", "width (equal-width bins) or mass (equal-count quantile bins)"),
    "source": ("--source", "which nearest-neighbour similarity: train (to the run's training store) or reference"),
    "queries": ("--queries", "eval samples shown"),
    "keep": ("--keep", "the number of samples to keep"),
    "threshold": ("--threshold", "a cosine-similarity threshold (instead of --keep)"),
    "eps": ("--eps", "duplicates have cosine similarity > 1 - eps"),
    "clusters": ("--clusters", "k-means clusters"),
    "sample_rows": ("--sample-rows", "rows sampled to train k-means"),
    "iterations": ("--iterations", "k-means iterations"),
    "rule": ("--rule", "the deduplication rule: greedy or all-earlier"),
    "block_rows": ("--block-rows", "rows per within-cluster similarity block"),
    "group_rows": ("--group-rows", "rows per bucket of clusters processed together"),
    "per_shard": ("--per-shard", "samples per output shard"),
    "epochs": ("--epochs", "passes over the training data"),
    "lr": ("--lr", "peak learning rate"),
    "warmup": ("--warmup", "learning-rate warmup steps"),
    "wd": ("--wd", "AdamW weight decay"),
    "lr_scheduler": ("--lr-scheduler", "cosine, const or const-cooldown"),
    "epochs_cooldown": ("--epochs-cooldown", "final epochs of linear learning-rate decay (const-cooldown)"),
    "lr_cooldown_end": ("--lr-cooldown-end", "learning rate at the end of the cooldown"),
    "extra_args": ("--extra-args", "further open_clip_train arguments, one quoted string"),
    "nodes": ("--nodes", "nodes of the printed Slurm job"),
    "gpus_per_node": ("--gpus-per-node", "GPUs per node of the printed commands"),
    "cache_mb": ("--cache-mb", "MiB of decoded images kept across checkpoints (0: decode each time)"),
    "save_logits": ("--save-logits", "also save the float16 cosine logits of every sample"),
    "experiment_epochs": ("--experiment-epochs", "training epochs of each experiment run"),
    "experiment_seeds": ("--experiment-seeds", "training seeds of each experiment row"),
}


def flag(keyword: str) -> str:
    """The CLI flag of a keyword argument.

    Raises:
        KeyError: the keyword is not in the glossary (every CLI option must be).
    """
    return GLOSSARY[keyword][0]
