"""Every format × file type loads with `datasets`; pairwise trains DPO and reward models, sft trains SFT (TRL)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.core.management import call_command

from exports.filters import PreferenceFilters
from exports.formats import FORMATS
from exports.hashing import content_hash
from exports.json_text import canonical_json_line
from exports.models import Export
from exports.selectors import iter_preference_lines, iter_preference_rows
from exports.services import export_create, export_run
from exports.writers import export_write

from .factories import make_comparison, make_project, make_user, vote

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_project(db):
    """Multi-turn prompts, a 3-way ranking and pairwise items: enough rows of every format for one batch."""
    project = make_project("train", mode="ranking", k=3, overlap=2)
    u1, u2 = make_user("t1"), make_user("t2")
    for index in range(4):
        c = make_comparison(project, k=3, text=f"Explain topic {index} briefly.")
        vote(c, u1, [1, 2, 3])
        vote(c, u2, [1, 3, 2])
    for index in range(3):
        c = make_comparison(project, k=2, text=f"Pick one {index}")
        vote(c, u1, [2, 1])
    return project


def _load(fmt_file: str, path: Path):
    import datasets

    if fmt_file == "hf":
        return datasets.load_from_disk(str(path))
    builder = "json" if fmt_file == "jsonl" else "parquet"
    return datasets.load_dataset(
        builder, data_files=str(path), split="train", cache_dir=str(path.parent / "hf-cache")
    )


@pytest.mark.parametrize("file_type", ["jsonl", "parquet", "hf"])
def test_every_format_loads_with_datasets(data_project, tmp_path, file_type):
    for fmt in FORMATS:
        dest = tmp_path / (f"{fmt}.{file_type}" if file_type != "hf" else fmt)
        result = export_write(project=data_project, format=fmt, file_type=file_type, dest=dest)
        rows = list(iter_preference_rows(project=data_project, format=fmt))
        assert result.rows == len(rows) > 0, fmt
        assert result.content_hash == content_hash(rows)
        dataset = _load(file_type, dest)
        assert len(dataset) == len(rows), fmt
        first = dataset[0]
        if fmt == "pairwise":
            assert first["prompt"][0]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
            assert isinstance(first["margin"], float)
        if fmt == "sft":
            assert first["messages"][-1]["role"] == "assistant"
        if fmt == "kto":
            assert isinstance(first["label"], bool)
        card = dest / "README.md" if file_type == "hf" else dest.with_name(dest.name + ".README.md")
        text = card.read_text()
        assert result.content_hash in text and '"aggregation": "majority"' in text
        assert f"| rows | {len(rows)} |" in text
        # Nothing left behind but the data and its card.
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    if file_type == "jsonl":
        # The JSONL file is exactly the canonical lines: its sha256 is the content hash.
        data = (tmp_path / "pairwise.jsonl").read_bytes()
        assert hashlib.sha256(data).hexdigest() == content_hash(
            iter_preference_rows(project=data_project, format="pairwise")
        )


def test_fast_lines_equal_canonical_rows(data_project):
    for fmt in FORMATS:
        for aggregation in ("majority", "all"):
            filters = PreferenceFilters(aggregation=aggregation)
            rows = iter_preference_rows(project=data_project, filters=filters, format=fmt)
            lines = iter_preference_lines(project=data_project, filters=filters, format=fmt)
            assert list(lines) == [canonical_json_line(row) for row in rows]


def test_management_command_and_celery_export(data_project, tmp_path, settings):
    out = tmp_path / "out" / "pairs.jsonl"
    call_command("export_preferences", "--project", "train", "--format", "pairwise", "--out", str(out))
    lines = out.read_text().splitlines()
    assert len(lines) == len(list(iter_preference_rows(project=data_project)))
    assert json.loads(lines[0])["chosen"][0]["role"] == "assistant"
    hf_dir = tmp_path / "out" / "sft_ds"
    call_command(
        "export_preferences", "--project", "train", "--format", "sft", "--out", str(hf_dir), "--no-progress"
    )
    assert (hf_dir / "dataset_info.json").exists() and (hf_dir / "README.md").exists()

    researcher = make_user("res", role="researcher")
    export = export_create(
        project=data_project,
        format="ranking",
        file_type="parquet",
        filters={"aggregation": "all"},
        created_by=researcher,
        enqueue=False,
    )
    assert export.status == Export.Status.QUEUED
    done = export_run(export_id=export.pk)
    assert done.status == Export.Status.SUCCEEDED and done.progress == 1.0 and done.rows > 0
    path = Path(settings.ARTIFACT_ROOT) / done.path
    assert path.is_file() and (path.parent / "README.md").exists()
    assert done.content_hash == content_hash(
        iter_preference_rows(
            project=data_project, format="ranking", filters=PreferenceFilters(aggregation="all")
        )
    )


def _trl_args(cls, out: Path, **extra):
    return cls(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_checkpointing=False,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        **extra,
    )


def test_pairwise_trains_dpo_and_reward_and_sft_trains_sft(data_project, tmp_path, tiny_model_dir):
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    torch.manual_seed(0)
    pairwise, sft = tmp_path / "pairwise.jsonl", tmp_path / "sft.parquet"
    export_write(project=data_project, format="pairwise", file_type="jsonl", dest=pairwise)
    export_write(project=data_project, format="sft", file_type="parquet", dest=sft)
    pairs = _load("jsonl", pairwise)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dpo = DPOTrainer(
        model=policy,
        args=_trl_args(DPOConfig, tmp_path / "dpo", max_length=64),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    assert dpo.train().training_loss > 0

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    scorer = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, config=config)
    reward = RewardTrainer(
        model=scorer,
        args=_trl_args(RewardConfig, tmp_path / "rm", max_length=64),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    assert reward.train().training_loss > 0

    demonstrations = _load("parquet", sft)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=_trl_args(SFTConfig, tmp_path / "sft", max_length=64),
        train_dataset=demonstrations,
        processing_class=tokenizer,
    )
    assert trainer.train().training_loss > 0
