# The suite trained here (config `pretrain`): corpus, tokenizer, and one model per size and data variant.
# Its checkpoints are read back as revisions step<N> of `local:` model sources (workflow_scripts/registry.py).


wildcard_constraints:
    data="standard|deduped",
    pretrained=one_of(STUDY.pretrained),


rule build_corpus:
    input:
        code=code("pretrain"),
        held_out=task_tables(t for t in STUDY.tasks if STUDY.kind(t) == "clm"),
    output:
        "results/pretrain/corpus/{data}.parquet",
    log:
        "results/logs/build_corpus/{data}.log",
    benchmark:
        "results/benchmarks/build_corpus/{data}.tsv"
    resources:
        mem_mb=2000,
    params:
        corpus=lambda wc: canonical(config["pretrain"]["corpus"]),
        seed=config["seed"],
    script:
        "scripts/build_corpus.py"


rule train_tokenizer:
    input:
        code=code("pretrain"),
        corpus="results/pretrain/corpus/standard.parquet",
    output:
        directory("results/pretrain/tokenizer"),
    log:
        "results/logs/train_tokenizer.log",
    benchmark:
        "results/benchmarks/train_tokenizer.tsv"
    resources:
        mem_mb=2000,
    params:
        vocab_size=lambda wc: config["pretrain"]["vocab_size"],
    script:
        "scripts/train_tokenizer.py"


rule pretrain:
    input:
        code=code("pretrain"),
        corpus=lambda wc: f"results/pretrain/corpus/{STUDY.pretrained[wc.pretrained].labels['data']}.parquet",
        tokenizer="results/pretrain/tokenizer",
    output:
        directory("results/pretrain/models/{pretrained}"),
    log:
        "results/logs/pretrain/{pretrained}.log",
    benchmark:
        "results/benchmarks/pretrain/{pretrained}.tsv"
    priority: 10  # long jobs on the critical path first; short inference jobs fill the gaps
    threads: lambda wc: config["pretrain"]["threads"]
    resources:
        mem_mb=4000,
    params:
        size=lambda wc: canonical(config["pretrain"]["sizes"][STUDY.pretrained[wc.pretrained].labels["size"]]),
        training=lambda wc: canonical(
            {k: config["pretrain"][k] for k in ("steps", "checkpoints", "batch_size", "seq_len", "lr", "warmup")}
        ),
        seed=config["seed"],
        work_dir=lambda wc: f"results/pretrain/work/{wc.pretrained}",
    script:
        "scripts/pretrain.py"
