"""`loraops_trainer train`: from a config to a published, verified adapter.

Order of work: everything that can be wrong with the input is checked before the weights are loaded (config,
output location, dataset bytes and rows, model shape on a weightless skeleton, tokenised data), so a bad
input fails in seconds. Then the loop: a plain PyTorch loop over pre-tokenised batches (no per-step host
synchronisation beyond what the interval of progress lines asks), checkpoints every N steps and on SIGTERM,
and a final publish where the manifest is written last.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import SigningConfig, TrainConfig
from .data import (
    IGNORE_INDEX,
    BatchPlan,
    DataFile,
    Example,
    TokenStats,
    pack_examples,
    read_data_file,
    split_rows,
    tokenize_rows,
)
from .errors import ConfigError, Preempted
from .progress import Clock, Reporter
from .storage import output_store


@dataclass
class Dataset:
    """The dataset as read and checked, before tokenisation."""

    train: DataFile
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    eval_file: DataFile | None = None


def read_dataset(config: TrainConfig, workdir: pathlib.Path) -> Dataset:
    spec = config.dataset
    train = read_data_file(spec.uri, spec.format, spec.sha256, workdir)
    if spec.eval_uri is not None:
        evaluation = read_data_file(spec.eval_uri, spec.format, spec.eval_sha256, workdir)
        return Dataset(train, train.rows, evaluation.rows, evaluation)
    if spec.eval_split is not None:
        rows, held_out = split_rows(train.rows, spec.eval_split, config.hyperparameters.seed)
        return Dataset(train, rows, held_out)
    return Dataset(train, train.rows, [])


class StopFlag:
    """Set by SIGTERM (Kubernetes' preemption and eviction signal); checked between optimizer steps."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        try:
            yield self
        finally:
            if self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)


def lr_lambda(warmup: int, total: int, scheduler: str) -> Any:
    """The learning-rate multiplier per step (the formulas of transformers' schedules)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


@dataclass
class Batch:
    tensors: dict[str, Any]
    tokens: int
    targets: int


def collate(examples: list[Example], pad_id: int, device: Any) -> Batch:
    import torch

    length = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    positions = None
    if any(example.position_ids is not None for example in examples):
        positions = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
        if positions is not None:
            positions[row, :n] = torch.tensor(example.position_ids or list(range(n)))
    tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if positions is not None:
        tensors["position_ids"] = positions
    tensors = {key: value.to(device, non_blocking=True) for key, value in tensors.items()}
    return Batch(tensors, sum(len(e.input_ids) for e in examples), sum(e.target_tokens for e in examples))


@dataclass
class Run:
    """Running totals of this training, carried across restarts by the checkpoint."""

    step: int = 0
    train_loss_first: float | None = None
    tokens_total: int = 0
    resumed_from: int | None = None
    window_ce: Any = 0.0
    window_targets: int = 0
    window_tokens: int = 0
    window_start: float = field(default_factory=time.monotonic)
    run_tokens: int = 0
    run_steps: int = 0


def _result_from_manifest(manifest: dict[str, Any], uri: str) -> dict[str, Any]:
    metrics = manifest.get("metrics", {})
    return {
        "status": "succeeded",
        "already_published": True,
        "output_uri": uri,
        "digest": manifest.get("digest"),
        **(
            {"signature_digest": manifest["signature"]["subjectDigest"]}
            if isinstance(manifest.get("signature"), dict) and "subjectDigest" in manifest["signature"]
            else {}
        ),
        "steps": metrics.get("steps"),
        "total_steps": metrics.get("steps"),
        "metrics": metrics,
    }


def train(
    config: TrainConfig, *, reporter: Reporter | None = None, workdir: pathlib.Path | None = None
) -> dict[str, Any]:
    """Run a training to the end and return the result event's fields. Raises TrainerError subclasses."""
    import torch

    from .distributed import Distributed

    dist = Distributed.from_env()
    reporter = reporter or Reporter(enabled=dist.is_main)
    own_workdir = workdir is None
    work = workdir or pathlib.Path(tempfile.mkdtemp(prefix="loraops-trainer-"))
    try:
        with StopFlag().installed() as stop:
            return _train(config, dist, reporter, work, stop, torch)
    finally:
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)
        dist.close()


def _train(
    config: TrainConfig, dist: Any, reporter: Reporter, work: pathlib.Path, stop: StopFlag, torch: Any
) -> dict[str, Any]:
    from . import checkpoint, methods, signing
    from .manifest import build_manifest, hash_directory, write_manifest

    clock = Clock()
    fingerprint = config.fingerprint()
    store = output_store(config.output.uri)

    def check_output() -> dict[str, Any] | None:
        manifest = store.read_manifest()
        if manifest is None:
            return None
        if manifest.get("training", {}).get("configFingerprint") != fingerprint:
            raise ConfigError(
                "OutputHoldsAnotherAdapter",
                f"{config.output.uri} already holds a published adapter of another configuration "
                f"(digest {manifest.get('digest')}); choose another output uri",
            )
        return manifest

    published = dist.agree(check_output)
    if published is not None:
        # A retried Job whose previous attempt published but died before reporting: report, do not retrain.
        already = _result_from_manifest(published, config.output.uri)
        reporter.emit("result", **already)
        return already

    dataset = read_dataset(config, work)
    if config.method == "qlora":
        methods.check_qlora_dependencies()
    base_path = dist.agree(lambda: str(methods.resolve_base_model(config.base_model, work)))
    base_dir = pathlib.Path(base_path) if not dist.enabled or dist.is_main else _local_base(config, work, base_path)
    if config.base_model.sha256:
        declared = config.base_model.sha256
        dist.agree(lambda: methods.verify_base_digest(base_dir, declared))
    facts = methods.inspect_model(base_dir)
    resolved_targets = methods.check_against_model(config, facts)

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    except Exception as error:
        raise ConfigError("TokenizerInvalid", f"{base_dir}: cannot load the tokenizer ({error})") from None
    hp = config.hyperparameters
    fmt = config.dataset.format
    train_examples, train_stats = tokenize_rows(tokenizer, dataset.train_rows, fmt, hp.max_seq_length)
    if not train_examples:
        raise ConfigError(
            "DatasetEmpty",
            f"{config.dataset.uri}: no example left to train on after filtering ({train_stats.as_dict()['dropped']}); "
            "check the format and maxSeqLength",
        )
    eval_examples, eval_stats = tokenize_rows(tokenizer, dataset.eval_rows, fmt, hp.max_seq_length)
    if dataset.eval_rows and not eval_examples:
        raise ConfigError("DatasetEmpty", "the eval rows have no example left after filtering")
    if hp.packing:
        train_examples = pack_examples(train_examples, hp.max_seq_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    plan = BatchPlan(len(train_examples), hp.batch_size, dist.world_size, dist.rank, hp.seed)
    total_steps = hp.max_steps or math.ceil(hp.epochs * plan.per_epoch / hp.gradient_accumulation)
    warmup = hp.warmup_for(total_steps)

    def find_checkpoint() -> checkpoint.CheckpointMeta | None:
        steps = store.checkpoint_steps()
        if not steps:
            return None
        where = f"{config.output.uri}/.checkpoints/step-{steps[-1]}"
        meta_dir = store.fetch_checkpoint(steps[-1], work)
        meta = checkpoint.read_meta(meta_dir)
        checkpoint.check_compatible(meta, fingerprint, dist.world_size, where)
        if meta.micro_batch != meta.step * hp.gradient_accumulation:
            raise ConfigError("CheckpointInvalid", f"{where}: data position {meta.micro_batch} != step × accumulation")
        return meta

    signing_config = config.signing
    if signing_config is not None and signing_config.key_path is not None:
        # Only rank 0 signs, but a key that cannot sign must stop every rank before the training, not after it.
        key_path = pathlib.Path(signing_config.key_path)
        dist.agree(lambda: signing.check_private_key(key_path))

    # The first write to the output location: after every read-only check, so bad input leaves nothing behind.
    dist.agree(store.probe_writable)
    resume = dist.agree(find_checkpoint)

    # Weights: everything above passed, now the expensive part.
    dtype = methods.compute_dtype(hp.precision, dist.device)
    model = methods.load_peft_model(config, base_dir, dist.device, dtype)
    parameters = methods.trainable_parameters(model)
    groups = methods.parameter_groups(model, hp.learning_rate, config.lora_plus_ratio, hp.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps, hp.scheduler))
    use_scaler = dtype == torch.float16 and dist.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    autocast = dtype != torch.float32 and config.method != "qlora"

    run = Run()
    if resume is not None:
        directory = store.fetch_checkpoint(resume.step, work)
        scheduler_state = checkpoint.load(directory, dist.rank, parameters, optimizer, dist.device)
        scheduler.load_state_dict(scheduler_state["scheduler"])
        if scaler is not None and "scaler" in scheduler_state:
            scaler.load_state_dict(scheduler_state["scaler"])
        run.step = resume.step
        run.train_loss_first = resume.train_loss_first
        run.tokens_total = resume.tokens_total
        run.resumed_from = resume.step

    train_module: Any = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_module = DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None
        )

    reporter.emit(
        "started",
        total_steps=total_steps,
        resumed_from_step=run.resumed_from,
        world_size=dist.world_size,
        method=config.method,
        lora_plus_ratio=config.lora_plus_ratio,
        target_modules=resolved_targets,
        trainable_parameters=sum(p.numel() for p in parameters.values()),
        dataset_sha256=dataset.train.sha256,
        rows={"train": train_stats.as_dict(), "eval": eval_stats.as_dict()},
        sequences=len(train_examples),
        setup_seconds=round(clock.elapsed(), 3),
    )

    def save_checkpoint() -> None:
        rng_states = dist.all_gather(checkpoint.rng_state())
        if dist.is_main:
            meta = checkpoint.CheckpointMeta(
                step=run.step,
                micro_batch=run.step * hp.gradient_accumulation,
                fingerprint=fingerprint,
                world_size=dist.world_size,
                total_steps=total_steps,
                train_loss_first=run.train_loss_first,
                tokens_total=run.tokens_total,
            )
            staging = store.staging_dir("checkpoint")
            state = {"scheduler": scheduler.state_dict()}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            checkpoint.save(staging, meta, parameters, optimizer, state, rng_states)
            store.publish_checkpoint(staging, run.step)
            store.prune_checkpoints(config.checkpoint.keep_last)
            reporter.emit("checkpoint", step=run.step, uri=f"{config.output.uri}/.checkpoints/step-{run.step}")
        dist.barrier()

    model.train()
    loop_clock = Clock()
    loop_cpu = time.process_time()
    run.window_start = time.monotonic()
    run.window_ce = torch.zeros((), device=dist.device, dtype=torch.float32)
    last_step_ce = run.window_ce
    last_step_targets = 0
    last_loss: float | None = None
    while run.step < total_steps:
        micro = [
            collate(
                [train_examples[i] for i in plan.indices(run.step * hp.gradient_accumulation + k)], pad_id, dist.device
            )
            for k in range(hp.gradient_accumulation)
        ]
        # The loss is a token-level mean over the whole accumulated step, not a mean of micro-batch means.
        targets = sum(batch.targets for batch in micro)
        items = torch.tensor(max(1, targets), device=dist.device)
        step_ce = torch.zeros((), device=dist.device, dtype=torch.float32)
        for index, batch in enumerate(micro):
            sync = index == len(micro) - 1 or not dist.enabled
            context = contextlib.nullcontext() if sync else train_module.no_sync()
            with context:
                with torch.autocast(dist.device.type, dtype=dtype, enabled=autocast):
                    loss = train_module(**batch.tensors, num_items_in_batch=items).loss
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            step_ce = step_ce + loss.detach().float() * items
        if scaler is not None:
            scaler.unscale_(optimizer)
        if hp.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(parameters.values()), hp.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        current_lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        run.step += 1
        run.run_steps += 1
        step_tokens = sum(batch.tokens for batch in micro)
        run.window_ce = run.window_ce + step_ce
        run.window_targets += targets
        run.window_tokens += step_tokens
        run.run_tokens += step_tokens
        last_step_ce, last_step_targets = step_ce, targets

        final = run.step == total_steps
        if run.step % config.progress.interval_steps == 0 or final or run.step == 1:
            ce, n_targets, n_tokens, last_ce, last_n = dist.sum(
                [
                    float(run.window_ce.item()),
                    run.window_targets,
                    run.window_tokens,
                    float(last_step_ce.item()),
                    last_step_targets,
                ]
            )
            now = time.monotonic()
            loss_value = ce / max(1.0, n_targets)
            if run.step == 1:
                run.train_loss_first = loss_value
            run.tokens_total += int(n_tokens)
            elapsed = loop_clock.elapsed()
            last_loss = last_ce / max(1.0, last_n)
            reporter.emit(
                "progress",
                step=run.step,
                total_steps=total_steps,
                loss=loss_value,
                last_step_loss=last_loss,
                learning_rate=current_lr,
                tokens_per_second=n_tokens / max(1e-9, now - run.window_start),
                eta_seconds=(total_steps - run.step) * elapsed / run.run_steps,
                percent=round(100 * run.step / total_steps, 2),
            )
            run.window_ce = torch.zeros((), device=dist.device, dtype=torch.float32)
            run.window_targets = run.window_tokens = 0
            run.window_start = now
        stopping = dist.any(stop.stop)
        if final:
            break
        if run.step % config.checkpoint.interval_steps == 0 or stopping:
            save_checkpoint()
        if stopping:
            reporter.emit("preempted", step=run.step, total_steps=total_steps)
            raise Preempted(
                "Preempted", f"SIGTERM at step {run.step}/{total_steps}; checkpoint written, rerun to resume"
            )
    train_seconds = loop_clock.elapsed()
    # CPU seconds of this process (all its threads) in the loop: on a shared machine, a throughput that does
    # not depend on what the neighbours run.
    train_cpu_seconds = time.process_time() - loop_cpu
    run_tokens = int(dist.sum([float(run.run_tokens)])[0])

    eval_loss = None
    if eval_examples:
        eval_loss = _eval_loss(model, eval_examples, hp.batch_size, pad_id, dist, dtype, autocast, torch)
        reporter.emit("eval", step=run.step, eval_loss=eval_loss, examples=len(eval_examples))

    metrics: dict[str, Any] = {
        "trainLossFirst": run.train_loss_first,
        "trainLossLast": last_loss,
        "evalLoss": eval_loss,
        "steps": run.step,
        "tokens": run.tokens_total,
        "tokensPerSecond": run_tokens / max(1e-9, train_seconds),
        "trainSeconds": train_seconds,
    }
    result: dict[str, Any] = {}
    if dist.is_main:
        staging = store.staging_dir("adapter")
        # The vocabulary is never resized here; "auto" would look the base name up on the hub.
        model.save_pretrained(str(staging), safe_serialization=True, save_embedding_layers=False)
        weights_digest = config.base_model.sha256
        signature = _sign(staging, config.signing) if config.signing is not None else None
        manifest = build_manifest(
            staging,
            kind="adapter",
            merge_state="unmerged",
            baseModel={
                "name": config.base_model.name,
                "revision": config.base_model.revision,
                "weightsDigest": weights_digest,
                "modelType": facts.model_type,
                "quantization": "nf4-double-quant" if config.method == "qlora" else None,
            },
            method=config.method,
            loraPlusRatio=config.lora_plus_ratio,
            lora={
                "rank": config.lora.rank,
                "alpha": config.lora.alpha,
                "dropout": config.lora.dropout,
                "targetModules": resolved_targets,
                "useDora": config.method == "dora",
                "useRslora": config.method == "rslora",
            },
            dataset=_dataset_section(config, dataset, train_stats, eval_stats),
            hyperparameters={
                **config.hyperparameters.model_dump(by_alias=True, mode="json"),
                "totalSteps": total_steps,
                "warmupStepsResolved": warmup,
                "worldSize": dist.world_size,
                "effectiveBatchSize": hp.batch_size * hp.gradient_accumulation * dist.world_size,
            },
            metrics={key: value for key, value in metrics.items() if value is not None},
            release={k: v for k, v in config.release.model_dump(by_alias=True).items() if v is not None} or None,
            training={
                "configFingerprint": fingerprint,
                "worldSize": dist.world_size,
                "resumedFromStep": run.resumed_from,
                "outputUri": config.output.uri,
            },
            signature=signature,
        )
        write_manifest(staging, manifest)
        digest, _ = hash_directory(staging)
        assert digest == manifest["digest"], "adapter files changed while the manifest was written"
        store.publish_adapter(staging)
        store.remove_checkpoints()
        result = {
            "status": "succeeded",
            "output_uri": config.output.uri,
            "digest": manifest["digest"],
            **({"signature_digest": signature["subjectDigest"]} if signature else {}),
            "steps": run.step,
            "total_steps": total_steps,
            "resumed_from_step": run.resumed_from,
            "metrics": {
                "train_loss_first": run.train_loss_first,
                "train_loss_last": last_loss,
                "eval_loss": eval_loss,
                "tokens": run.tokens_total,
                "tokens_per_second": metrics["tokensPerSecond"],
                "train_seconds": train_seconds,
                "train_cpu_seconds": train_cpu_seconds,
            },
        }
        reporter.emit("result", **result)
    dist.barrier()
    return result


def _sign(staging: pathlib.Path, spec: SigningConfig) -> dict[str, Any]:
    """Sign the staged adapter (before the manifest exists: the manifest records the signature, so it cannot
    be inside it); returns the manifest's `signature` section. Keys are read from their mounted files by the
    library and never logged."""
    from .signing import SIGNATURE_FILE, sign_folder

    chain = [pathlib.Path(p) for p in spec.certificate_chain_paths if pathlib.Path(p).is_file()]
    facts = sign_folder(
        staging,
        private_key=pathlib.Path(spec.key_path) if spec.key_path else None,
        certificate=pathlib.Path(spec.certificate_path) if spec.certificate_path else None,
        certificate_chain=chain,
        sigstore=spec.sigstore,
    )
    return {"file": SIGNATURE_FILE, **facts.as_dict()}


def _local_base(config: TrainConfig, work: pathlib.Path, main_path: str) -> pathlib.Path:
    """Another rank's copy of the base model: the same path when it is shared, its own download otherwise."""
    from . import methods

    path = pathlib.Path(main_path)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    return methods.resolve_base_model(config.base_model, work)


def _dataset_section(
    config: TrainConfig, dataset: Dataset, train: TokenStats, evaluation: TokenStats
) -> dict[str, Any]:
    section: dict[str, Any] = {
        "uri": config.dataset.uri,
        "format": config.dataset.format,
        "version": config.dataset.version,
        "sha256": dataset.train.sha256,
        "rows": {
            "read": len(dataset.train.rows),
            "train": train.kept,
            "eval": evaluation.kept,
            "truncated": train.truncated + evaluation.truncated,
            "dropped": train.dropped.total() + evaluation.dropped.total(),
        },
    }
    if config.dataset.eval_split is not None:
        section["evalSplit"] = config.dataset.eval_split
    if dataset.eval_file is not None:
        section["eval"] = {"uri": dataset.eval_file.uri, "sha256": dataset.eval_file.sha256}
    return section


def _eval_loss(
    model: Any, examples: list[Example], batch_size: int, pad_id: int, dist: Any, dtype: Any, autocast: bool, torch: Any
) -> float:
    """Token-level mean loss over the eval examples, each rank taking every world_size-th one."""
    model.eval()
    ce, n_targets = 0.0, 0
    mine = examples[dist.rank :: dist.world_size]
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = collate(mine[start : start + batch_size], pad_id, dist.device)
            if batch.targets == 0:
                continue
            items = torch.tensor(batch.targets, device=dist.device)
            with torch.autocast(dist.device.type, dtype=dtype, enabled=autocast):
                loss = model(**batch.tensors, num_items_in_batch=items).loss
            ce += float(loss.float().item()) * batch.targets
            n_targets += batch.targets
    model.train()
    total_ce, total_targets = dist.sum([ce, float(n_targets)])
    return total_ce / max(1.0, total_targets)
