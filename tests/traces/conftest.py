"""Tiny trace files in every supported format, written per test into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

AZURE_2023 = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,55
2023-11-16 18:15:51.3910170,91,16
"""
AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 00:00:00.009930+00:00,2162,5
2024-05-10 00:00:00.5+00:00,1200,17
2024-05-10 00:00:01+00:00,3000,1
2024-05-10 00:00:02.123456789+00:00,40,300
"""
BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,276,693,Conversation log
120,ChatGPT,300,0,300,API log
130,ChatGPT,12,40,52,API log
"""
MOONCAKE = [
    {"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [0, 1, 2]},
    {"timestamp": 0, "input_length": 6472, "output_length": 26, "hash_ids": [0, 3]},
    {"timestamp": 3000, "input_length": 6551, "output_length": 14, "hash_ids": [4]},
    {"timestamp": 6000, "input_length": 100, "output_length": 9, "hash_ids": []},
]
LENGTH_ONLY = """num_prefill_tokens,num_decode_tokens
100,10
2000,200
35,7
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def azure_2023_csv(tmp_path: Path) -> Path:
    """Four rows of the Azure 2023 format (naive timestamps, 7 fractional digits)."""
    return write(tmp_path / "azure2023.csv", AZURE_2023)


@pytest.fixture
def azure_2024_csv(tmp_path: Path) -> Path:
    """Four rows of the Azure 2024 format (+00:00 offsets, mixed fractional precision)."""
    return write(tmp_path / "azure2024.csv", AZURE_2024)


@pytest.fixture
def burstgpt_csv(tmp_path: Path) -> Path:
    """Five BurstGPT rows, two of them failed (0 response tokens)."""
    return write(tmp_path / "burstgpt.csv", BURSTGPT)


@pytest.fixture
def mooncake_jsonl(tmp_path: Path) -> Path:
    """Four Mooncake rows in 3-s buckets (ms timestamps) with hash_ids."""
    return write(tmp_path / "mooncake.jsonl", "".join(json.dumps(r) + "\n" for r in MOONCAKE))


@pytest.fixture
def length_only_csv(tmp_path: Path) -> Path:
    """Three Vidur-style rows: lengths only, no timestamps."""
    return write(tmp_path / "lengths.csv", LENGTH_ONLY)


@pytest.fixture
def generic_parquet(tmp_path: Path) -> Path:
    """A Parquet file with its own column names and a timestamp column."""
    path = tmp_path / "generic.parquet"
    table = pa.table({
        "when": pa.array([0, 1_500_000_000, 4_000_000_000], pa.timestamp("ns")),
        "prompt": pa.array([10, 20, 30], pa.int64()),
        "completion": pa.array([1, 2, 3], pa.int32()),
        "conv": pa.array([7, 7, 8], pa.int64()),
    })
    pq.write_table(table, path)
    return path
