"""Every bad flag value is one line that names the flag as typed (`--zero-output`), never a Python argument."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")
SMALL = ["--synthetic", "n=20,input=256,output=16,rate=20"]
# e.g. zero_output='keep', rate_per_s=0; the trace's own field names are --map syntax (--map arrival_s=ts)
PYTHON_NAME = re.compile(r"\b(?!(arrival_s|input_tokens|output_tokens)=)[a-z]+_[a-z_]+=")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Small trace files, each with the one property a case needs."""
    root = tmp_path_factory.mktemp("traces")
    texts = {
        "ok.csv": "arrival_s,input_tokens,output_tokens\n0.0,100,10\n0.5,200,20\n1.0,300,30\n",
        "unsorted.csv": "arrival_s,input_tokens,output_tokens\n0.0,100,10\n2.0,200,20\n1.0,300,30\n",
        "zero.csv": "arrival_s,input_tokens,output_tokens\n0.0,100,0\n1.0,200,0\n",
        "lengths.csv": "num_prefill_tokens,num_decode_tokens\n100,10\n200,20\n",
        "odd.csv": "foo,bar\n1,2\n",
        "mine.csv": "t,i,o\n0,100,10\n1,200,20\n",
    }
    paths = {}
    for name, text in texts.items():
        (root / name).write_text(text)
        paths[name] = str(root / name)
    stamps = pa.array([0, 1_000_000_000], pa.timestamp("ns"))
    pq.write_table(pa.table({"t": stamps, "i": [100, 200], "o": [10, 20]}), root / "stamps.parquet")
    paths["stamps.parquet"] = str(root / "stamps.parquet")
    return paths


CASES = [
    # trace loading flags (any command that reads a trace; `trace stats` here)
    (["trace", "stats", "{ok.csv}", "--zero-output", "sometimes"], "--zero-output 'sometimes': must be drop or keep"),
    (["trace", "stats", "{ok.csv}", "--unsorted", "maybe"], "--unsorted 'maybe': must be sort or refuse"),
    (["trace", "stats", "{ok.csv}", "--spread-buckets-s", "0"], "--spread-buckets-s 0: must be > 0"),
    (["trace", "stats", "{lengths.csv}", "--arrivals", "gamma", "--rate", "2", "--cv", "0"], "--cv 0: must be > 0"),
    (["trace", "stats", "{ok.csv}", "--arrivals", "weekly"], "--arrivals 'weekly': must be one of"),
    (["trace", "stats", "{lengths.csv}", "--arrivals", "poisson"], "--arrivals poisson needs --rate > 0"),
    (["trace", "stats", "{ok.csv}", "--arrivals", "zero"], "--arrivals applies only to traces without timestamps"),
    (["trace", "stats", "{lengths.csv}"], "--arrivals poisson --rate R"),
    (["trace", "stats", "{mine.csv}", "--map", "arrival_s=t,input_tokens=i,output_tokens=o", "--time-unit", "hours"],
     "--time-unit 'hours': must be one of"),
    (["trace", "stats", "{mine.csv}", "--map", "arrival=t,input_tokens=i,output_tokens=o"], "--map: unknown field"),
    (["trace", "stats", "{mine.csv}", "--map", "arrival_s=t,input_tokens=i"], "--map: 'output_tokens' is required"),
    (["trace", "stats", "{mine.csv}", "--map", "arrival_s"], "--map 'arrival_s': expected field=column pairs"),
    (["trace", "stats", "{ok.csv}", "--format", "nope"], "--format 'nope': unknown"),
    (["trace", "stats", "{ok.csv}", "--format", "generic"], "--format generic needs a column mapping, e.g. --map"),
    (["trace", "stats", "{odd.csv}"], "pass --format"),
    (["trace", "convert", "{zero.csv}", "{out}"], "pass --zero-output keep"),
    (["trace", "stats", "{unsorted.csv}", "--unsorted", "refuse"], "--unsorted sort sorts them"),
    (["trace", "convert", "{unsorted.csv}", "{out}", "--unsorted", "refuse"], "--unsorted sort sorts them"),
    (["trace", "stats", "{stamps.parquet}", "--map", "arrival_s=t,input_tokens=i,output_tokens=o"],
     "pass --time-unit datetime"),
    # trace bin / convert / synth
    (["trace", "bin", "{ok.csv}", "--window-s", "0"], "--window-s 0: must be > 0"),
    (["trace", "bin", "{ok.csv}", "--input-edges", "512,32"], "--input-edges 512,32: must be"),
    (["trace", "bin", "{ok.csv}", "--output-edges", "-1"], "--output-edges -1: must be"),
    (["trace", "convert", "{ok.csv}", "{out}", "--scale-rate", "0"], "--scale-rate 0: must be > 0"),
    (["trace", "convert", "{ok.csv}", "{out}", "--head", "-1"], "--head -1: must be >= 0"),
    (["trace", "convert", "{ok.csv}", "{out}", "--start-s", "5", "--end-s", "1"], "--end-s 1: must be > --start-s 5"),
    (["trace", "synth", "{out}", "--requests", "0"], "--requests 0: must be in 1.."),
    (["trace", "synth", "{out}", "--rate", "0"], "--rate 0: must be > 0"),
    (["trace", "synth", "{out}", "--process", "weekly"], "--process weekly: must be one of"),
    (["trace", "synth", "{out}", "--process", "gamma", "--cv", "0"], "--cv 0: must be > 0"),
    (["trace", "synth", "{out}", "--input-tokens", "-1"], "--input-tokens -1: must be >= 0"),
    (["trace", "synth", "{out}", "--output-tokens", "0"], "--output-tokens 0: must be >= 1"),
    # simulate
    (["simulate", "--synthetic", "n=0"], "--synthetic n=0: must be in 1.."),
    (["simulate", "--synthetic", "n=5,rate=0"], "--synthetic rate=0: must be > 0"),
    (["simulate", "--synthetic", "n=5,process=weekly"], "--synthetic process=weekly: must be one of"),
    (["simulate", "--synthetic", "n=5,rate=2,process=gamma,cv=0"], "--synthetic cv=0: must be > 0"),
    (["simulate", "--synthetic", "n=5,input=-1"], "--synthetic input=-1: must be >= 0"),
    (["simulate", "--synthetic", "n=5,output=0"], "--synthetic output=0: must be >= 1"),
    (["simulate", *SMALL, "--profile", TOY, "--policy", "fifo"], "--policy 'fifo': must be one of"),
    (["simulate", *SMALL, "--profile", TOY, "--cost", "guess"], "--cost 'guess': must be one of"),
    (["simulate", *SMALL, "--profile", TOY, "--router", "best"], "--router 'best': must be one of"),
    (["simulate", *SMALL, "--cost", "roofline", "--tp", "3"], "--tp 3: must divide"),
    (["simulate", *SMALL, "--profile", TOY, "--policy", "chunked", "--max-batched-tokens", "4", "--max-num-seqs", "8"],
     "--max-batched-tokens 4: must exceed --max-num-seqs 8"),
    (["simulate", *SMALL, "--profile", TOY, "--window", "5:1"], "--window 5:1: must be START:END"),
    # project
    (["project", "{ok.csv}", "--profile", TOY, "--out-of-range", "drop"], "--out-of-range 'drop': must be one of"),
    (["project", "{ok.csv}", "--profile", TOY, "--estimators", "guess"], "--estimators 'guess': must be"),
    (["project", "{ok.csv}", "--profile", TOY, "--max-batch", "0"], "--max-batch 0: must be >= 1"),
    (["project", "{ok.csv}", "--profile", TOY, "--window-s", "0"], "--window-s 0: must be > 0"),
    (["project", "{ok.csv}", "--profile", TOY, "--pad-s", "-1"], "--pad-s -1: must be >= 0"),
    (["project", "{ok.csv}", "--profile", TOY, "--pad-s", "700"], "--pad-s 700: must be <= 600 s"),
    (["project", "{ok.csv}", "--profile", TOY, "--peak-flops", "0"], "--peak-flops 0: must be > 0"),
    (["project", "{ok.csv}", "--profile", TOY, "--tdp-w", "0"], "--tdp-w 0: must be > 0"),
    (["project", "{ok.csv}", "--profile", TOY, "--replicas", "0"], "--replicas 0: must be >= 1"),
    (["project", "{ok.csv}", "--profile", TOY, "--max-num-seqs", "0"], "--max-num-seqs 0: must be >= 1"),
    (["project", "{ok.csv}", "--profile", TOY, "--policy", "fifo"], "--policy 'fifo': must be one of"),
    (["project", "{ok.csv}", "--profile", TOY, "--cost", "guess"], "--cost 'guess': must be one of"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a[:2] + a[3:5]) for a, _ in CASES])
def test_a_bad_flag_is_one_line_naming_the_flag(files, tmp_path, args, message):
    names = {**{f"{{{k}}}": v for k, v in files.items()}, "{out}": str(tmp_path / "out.parquet")}
    result = CliRunner().invoke(app, [names.get(a, a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not PYTHON_NAME.search(lines[0]), lines[0]
    assert not (tmp_path / "out.parquet").exists()
