"""Trainer throughput: `loraops_trainer train` against a bare PEFT loop, same model, data and batches.

Both run as fresh processes with the same thread count, alternately, several rounds; each reports the tokens
(non-padding input tokens) it pushed through forward and backward divided by the seconds of its training loop
(model loading and tokenisation excluded on both sides, collation included on both). The figure of merit is the
ratio: what the trainer's bookkeeping (token-weighted loss, progress lines, preemption checks, checkpoint
cadence) costs over the plainest loop one could write.

The machine is shared: other work only ever slows a run down, so the headline figures are each side's best
round (as `timeit` takes the minimum); medians are reported too. As a cross-check that does not depend on
the neighbours, the same ratio is computed from CPU seconds of the loop (one thread, so CPU time is the work).

`python -m bench.bench_trainer baseline CONFIG` runs the bare loop alone (used by `run()`).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
ROUNDS = 5
THREADS = "1"
MODEL = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4}
STEPS = 80


def _config(model: pathlib.Path, dataset: pathlib.Path, output: pathlib.Path) -> dict[str, Any]:
    from loraops_trainer import testing

    return testing.train_config(
        model,
        dataset,
        output,
        max_steps=STEPS,
        lora={"rank": 16, "alpha": 32, "dropout": 0.0, "targetModules": "all-linear"},
        # Same arithmetic as the bare loop: no clipping, no schedule, no checkpoint inside the run.
        hyperparameters={"learningRate": 1e-3, "batchSize": 8, "maxSeqLength": 128, "maxGradNorm": None},
        checkpoint={"intervalSteps": 10_000},
        progress={"intervalSteps": 10},
    )


def baseline(config_path: str) -> dict[str, Any]:
    """The bare loop: PEFT model, AdamW, forward/backward/step over the same batches, nothing else."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraops_trainer.config import load_train_config
    from loraops_trainer.data import BatchPlan, parse_jsonl, tokenize_rows

    config = load_train_config(config_path)
    hp = config.hyperparameters
    tokenizer = AutoTokenizer.from_pretrained(config.base_model.path)
    rows = parse_jsonl(pathlib.Path(config.dataset.uri), config.dataset.format, "bench")
    examples, _ = tokenize_rows(tokenizer, rows, config.dataset.format, hp.max_seq_length)
    plan = BatchPlan(len(examples), hp.batch_size, 1, 0, hp.seed)
    model = AutoModelForCausalLM.from_pretrained(config.base_model.path, dtype=torch.float32)
    torch.manual_seed(hp.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=config.lora.rank,
            lora_alpha=int(config.lora.alpha),
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    model.config.use_cache = False
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate)
    pad = tokenizer.pad_token_id
    model.train()
    tokens = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(hp.max_steps or 0):
        # Collated in the loop, as a DataLoader would: the trainer's timing includes its collation too.
        chosen = [examples[i] for i in plan.indices(step)]
        width = max(len(e.input_ids) for e in chosen)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in chosen])
        labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in chosen])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chosen])
        count = int(mask.sum())
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += count
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds, "tokens_per_second": tokens / seconds}


def _run(args: list[str], env: dict[str, str]) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    process = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{args} failed ({process.returncode}): {process.stderr[-2000:]}")
    return [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")], wall


def run() -> dict[str, Any]:
    from loraops_trainer import testing

    env = {
        **os.environ,
        "OMP_NUM_THREADS": THREADS,
        "MKL_NUM_THREADS": THREADS,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        root = pathlib.Path(tmp)
        model = testing.build_tiny_llama(root / "model", **MODEL)
        dataset = testing.write_jsonl(root / "data.jsonl", testing.capital_rows("completion", 512))
        trainer_rates, baseline_rates, trainer_walls, baseline_walls = [], [], [], []
        trainer_cpu_rates, baseline_cpu_rates = [], []
        trainer_tokens = baseline_tokens = 0
        for round_index in range(ROUNDS):
            output = root / f"out-{round_index}"
            config_path = root / f"config-{round_index}.json"
            config_path.write_text(json.dumps(_config(model, dataset, output)))
            order = ["trainer", "baseline"] if round_index % 2 == 0 else ["baseline", "trainer"]
            for which in order:
                if which == "trainer":
                    events, wall = _run(["-m", "loraops_trainer", "train", "--config", str(config_path)], env)
                    result = events[-1]
                    assert result["event"] == "result", result
                    trainer_rates.append(result["metrics"]["tokens_per_second"])
                    trainer_tokens = result["metrics"]["tokens"]
                    trainer_cpu_rates.append(trainer_tokens / result["metrics"]["train_cpu_seconds"])
                    trainer_walls.append(wall)
                else:
                    (measured,), wall = _run(["-m", "bench.bench_trainer", "baseline", str(config_path)], env)
                    baseline_rates.append(measured["tokens_per_second"])
                    baseline_tokens = measured["tokens"]
                    baseline_cpu_rates.append(baseline_tokens / measured["cpu_seconds"])
                    baseline_walls.append(wall)
    if trainer_tokens != baseline_tokens:
        raise RuntimeError(f"the two loops saw different data: {trainer_tokens} vs {baseline_tokens} tokens")
    tokens_per_s, baseline_tokens_per_s = max(trainer_rates), max(baseline_rates)
    median, baseline_median = statistics.median(trainer_rates), statistics.median(baseline_rates)
    cpu, baseline_cpu = max(trainer_cpu_rates), max(baseline_cpu_rates)
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "baseline_tokens_per_s": round(baseline_tokens_per_s, 1),
        "ratio": round(tokens_per_s / baseline_tokens_per_s, 4),
        "target_ratio": 0.97,
        "statistic": f"best of {ROUNDS} alternating rounds (wall clock of the training loop)",
        "median": {
            "tokens_per_s": round(median, 1),
            "baseline_tokens_per_s": round(baseline_median, 1),
            "ratio": round(median / baseline_median, 4),
        },
        "cpu_time": {
            "tokens_per_cpu_s": round(cpu, 1),
            "baseline_tokens_per_cpu_s": round(baseline_cpu, 1),
            "ratio": round(cpu / baseline_cpu, 4),
        },
        "rounds": ROUNDS,
        "trainer_tokens_per_s_each": [round(r, 1) for r in trainer_rates],
        "baseline_tokens_per_s_each": [round(r, 1) for r in baseline_rates],
        "tokens_per_run": trainer_tokens,
        "process_wall_s_median": {
            "trainer": round(statistics.median(trainer_walls), 2),
            "baseline": round(statistics.median(baseline_walls), 2),
        },
        "setup": {
            "model": {"type": "llama", **MODEL, "head_dim": MODEL["hidden_size"] // MODEL["num_attention_heads"]},
            "method": "lora",
            "rank": 16,
            "target_modules": "all-linear",
            "steps": STEPS,
            "batch_size": 8,
            "max_seq_length": 128,
            "dataset": "512 synthetic completion rows",
            "device": "cpu",
            "threads": int(THREADS),
        },
        "gpu": None,
        "gpu_note": "no GPU on this machine: lora vs qlora tokens/s and peak memory on a ~0.5B model not measured",
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "baseline":
        print(json.dumps(baseline(sys.argv[2])))
    else:
        print(json.dumps(run(), indent=2))
