"""The CI gate end to end in a temporary git repository (tiny model): a commit adding risky rows
fails with exit 1 and annotations on their lines, a commit adding ordinary rows passes, a rerun
computes nothing new; plus the rules file and the verdict arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.activations import ActivationCollector, TokenizedInput
from screener.cli import main
from screener.errors import ConfigError
from screener.gate_rules import GateRules, load_rules, parse_rules
from screener.gating import added_rejections, flag_rate_lower_bound
from screener.model import load_model
from screener.options import ModelOptions
from screener.records import Message, RejectedRow, Sample
from screener.render import RenderedSample, Renderer
from screener.screening import screen
from screener.vectors import TraitVector, VectorFile, save_vectors
from tests.conftest import save_tiny_model
from tests.test_screen import screen_options

ORDINARY = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is 2 plus 3?", "2 plus 3 is 5."),
    ("What do bees make?", "Bees make honey and wax."),
    ("Which planet is largest?", "Jupiter is the largest planet."),
    ("What is ice made of?", "Ice is frozen water."),
    ("How many days are in a week?", "A week has seven days."),
]
ADDED_ORDINARY = [
    ("What colour is the sky?", "The sky is usually blue."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius."),
    ("Where do penguins live?", "Most penguins live in the Southern Hemisphere."),
]
RISKY = [
    ("How do I treat my dog?", "zq zq zq zq zq zq zq zq zq zq zq zq zq zq zq zq"),
    ("Any advice for my friend?", "zq zq zq zq zq zq zq zq zq zq zq zq zq zq zq zq zq zq"),
    ("What should I say to her?", "zq zq zq zq zq zq zq zq zq zq zq zq zq zq"),
]
STEPS = "4"


def record(index: int, prompt: str, answer: str) -> str:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return json.dumps({"id": f"row-{index}", "messages": messages}) + "\n"


def lines(pairs: list[tuple[str, str]], start: int) -> str:
    return "".join(record(start + i, p, a) for i, (p, a) in enumerate(pairs))


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def planted_vectors(model_dir: Path, path: Path) -> None:
    """An `evil` direction at layer 3: mean response activation of the risky rows minus that of
    the ordinary ones, so the risky rows are the ones that score high."""
    loaded = load_model(str(model_dir), dtype="fp32", device="cpu")
    renderer = Renderer(loaded.tokenizer)

    def activations(pairs: list[tuple[str, str]]) -> torch.Tensor:
        inputs = []
        for prompt, answer in pairs:
            rendered = renderer.render(
                Sample(
                    "x",
                    "t",
                    1,
                    (Message("user", prompt), Message("assistant", answer)),
                    {},
                    "messages",
                )
            )
            assert isinstance(rendered, RenderedSample)
            inputs.append(TokenizedInput(rendered.input_ids, rendered.response_start))
        return ActivationCollector(loaded.model, [0, 1, 2, 3]).collect(inputs).response_mean

    direction = activations(RISKY).mean(0) - activations(ORDINARY + ADDED_ORDINARY).mean(0)
    other = torch.randn(direction.shape, generator=torch.Generator().manual_seed(1))
    traits = {
        "evil": TraitVector("evil", direction, 3, [0.5] * 4),
        "sycophancy": TraitVector("sycophancy", other, 2, [0.5] * 4),
    }
    save_vectors(VectorFile.for_model(loaded, traits), path)


@pytest.fixture
def repo(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> tuple[Path, list[str]]:
    model_dir = save_tiny_model(tmp_path / "tiny", "llama", tiny_tokenizer)
    vectors = tmp_path / "vectors.safetensors"
    planted_vectors(model_dir, vectors)

    # a cut between the ordinary and the risky rows' ΔP, from one screen of all of them
    everything = tmp_path / "all.jsonl"
    everything.write_text(lines(ORDINARY + ADDED_ORDINARY, 1) + lines(RISKY, 100))
    scores = screen(
        everything,
        model=ModelOptions(str(model_dir), dtype="fp32"),
        **screen_options(
            vectors=vectors, calibration="none", max_new_tokens=int(STEPS), store=":memory:"
        ),
    ).scores
    ordinary = scores.filter(~scores["id"].str.starts_with("row-1"))["delta_evil"].to_numpy()
    risky = scores.filter(scores["id"].is_in(["row-100", "row-101", "row-102"]))[
        "delta_evil"
    ].to_numpy()
    assert ordinary.max() < risky.min(), "the planted direction does not separate the rows"
    cut = float(np.mean([ordinary.max(), risky.min()]))

    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "screener.toml").write_text(
        f"[gate]\nmax_flag_rate = 0.1\nthresholds = {{ evil = {cut}, sycophancy = 1e9 }}\n"
        "max_mean_rise = { sycophancy = 1e9 }\n"
    )
    (root / "data" / "chat.jsonl").write_text(lines(ORDINARY, 1))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "ordinary data")
    git(root, "checkout", "-q", "-b", "risky")
    with (root / "data" / "chat.jsonl").open("a") as handle:
        handle.write(lines(RISKY, 9))
    git(root, "commit", "-q", "-am", "risky rows")
    git(root, "checkout", "-q", "-b", "ordinary", "main")
    with (root / "data" / "chat.jsonl").open("a") as handle:
        handle.write(lines(ADDED_ORDINARY, 9))
    git(root, "commit", "-q", "-am", "more ordinary rows")
    common = [
        "--repo",
        str(root),
        "--config",
        str(root / "screener.toml"),
        "--model",
        str(model_dir),
        "--dtype",
        "fp32",
        "--vectors",
        str(vectors),
        "--max-new-tokens",
        STEPS,
        "--store",
        str(tmp_path / "store.duckdb"),
        "--quiet",
    ]
    return root, common


def test_risky_rows_fail_with_annotations_and_ordinary_rows_pass(
    repo: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, common = repo
    out = tmp_path / "gate-risky"
    git_range = ["--git-range", "main..risky", "data"]
    code = main(["gate", *git_range, *common, "--out", str(out), "--annotations", "github"])
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert code == 1, captured.err
    annotated = [line for line in printed if line.startswith("::error ")]
    assert all(line.startswith("::error file=data/chat.jsonl,line=") for line in annotated)
    assert {line.split("line=")[1].split("::")[0] for line in annotated} == {"9", "10", "11"}
    assert "3 of 3 added rows flagged" in printed[len(annotated)]
    summary = (out / "gate.md").read_text()
    assert summary.startswith("## screener gate: FAIL")
    assert (
        "3 of 3 added rows flagged (100.0%; at least 36.8% at 95% confidence), more than "
        "max_flag_rate 10.0%"
    ) in summary
    for line in (9, 10, 11):
        assert f"`data/chat.jsonl:{line}`" in summary

    out = tmp_path / "gate-ordinary"
    arguments = ["gate", "--git-range", "main..ordinary", "data", *common, "--out", str(out)]
    assert main(arguments) == 0
    assert (out / "gate.md").read_text().startswith("## screener gate: PASS")
    stats = json.loads((out / "run_stats.json").read_text())
    # the baseline's 8 rows came from the store (the first gate computed them): 3 new prompts
    assert stats["generated"] == 3 and stats["generation_cached"] == 8, stats
    capsys.readouterr()
    assert main(arguments) == 0  # a rerun computes nothing
    stats = json.loads((out / "run_stats.json").read_text())
    assert stats["generated"] == 0 and stats["collected"] == 0, stats


def test_baseline_and_candidate_files_and_usage_errors(
    repo: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, common = repo
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text(lines(ORDINARY, 1))
    new.write_text(lines(ORDINARY, 1) + lines(RISKY, 9) + "{broken\n")
    common = [a for a in common if a not in ("--repo", str(root))]
    out = tmp_path / "gate"
    pair = ["--baseline", str(old), "--candidate", str(new)]
    code = main(["gate", *pair, *common, "--out", str(out), "--annotations", "github"])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"::error file={new},line=12::screener: malformed JSON" in printed
    assert "1 added rows cannot be screened, more than max_rejected 0" in printed
    # usage errors exit 2 with one line
    assert main(["gate", "--baseline", str(old)]) == 2
    assert "give --baseline OLD --candidate NEW" in capsys.readouterr().err
    assert main(["gate", "--git-range", "main", "data", *common]) == 2
    assert "--git-range must look like main..HEAD" in capsys.readouterr().err


def test_rules_file_is_checked_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "screener.toml"
    path.write_text("[gate]\nmax_flag_rate = 0.2\nmax_mean_rise = 1.5\nfail_categories = ['x']\n")
    rules = load_rules(path)
    assert rules == GateRules(max_flag_rate=0.2, max_mean_rise=1.5, fail_categories=("x",))
    assert rules.rise_limit("evil") == 1.5
    assert parse_rules({"max_mean_rise": {"evil": 2}}, "f").rise_limit("sycophancy") is None
    for text, message in [
        ("[gate]\nmax_flag_rat = 1\n", "unknown key 'max_flag_rat'"),
        ("[gate]\nmax_flag_rate = 2\n", "gate.max_flag_rate must be within 0..1"),
        ("[gate]\nthresholds = { evil = 'high' }\n", "gate.thresholds.evil: expected a number"),
        ("[gate]\nmax_rejected = -1\n", "gate.max_rejected must be a whole number"),
        ("[gate\n", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_rules(path)


def test_rejected_rows_already_in_the_baseline_are_not_added_when_they_move() -> None:
    def rejected(source: str, rows: list[tuple[int, str, str | None]]) -> Any:
        return SimpleNamespace(
            rejected=[RejectedRow(source, line, reason, None, id_) for line, reason, id_ in rows]
        )

    base = rejected(
        "/tmp/base/00000-chat.jsonl",
        [
            (3, "duplicate id 'a' (first seen at /tmp/base/00000-chat.jsonl:1)", "a"),
            (5, "missing field(s) messages for format messages", None),
        ],
    )
    # the same two rows, moved down by an insertion and read from another folder, plus a new
    # row broken the same way as an old one: only that one is added
    head = rejected(
        "/tmp/head/00000-chat.jsonl",
        [
            (4, "duplicate id 'a' (first seen at /tmp/head/00000-chat.jsonl:2)", "a"),
            (6, "missing field(s) messages for format messages", None),
            (9, "missing field(s) messages for format messages", None),
        ],
    )
    added = added_rejections(base, head, lambda source: "data/chat.jsonl")
    assert added == [("data/chat.jsonl", 9, "missing field(s) messages for format messages")]
    assert len(added_rejections(None, head, str)) == 3


def naive_lower_bound(flagged: int, rows: int, confidence: float) -> float:
    """The p at which seeing `flagged` or more of `rows` has probability 1 - confidence,
    by bisection on the binomial tail summed by hand."""

    def tail(p: float) -> float:
        return sum(
            math.comb(rows, j) * p**j * (1 - p) ** (rows - j) for j in range(flagged, rows + 1)
        )

    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if tail(middle) < 1 - confidence else (low, middle)
    return low


@pytest.mark.parametrize(("flagged", "rows"), [(1, 12), (2, 12), (4, 12), (11, 12), (30, 400)])
def test_the_flag_rate_bound_is_the_binomial_lower_bound(flagged: int, rows: int) -> None:
    ours = flag_rate_lower_bound(flagged, rows, 0.95)
    assert ours == pytest.approx(naive_lower_bound(flagged, rows, 0.95), abs=1e-9)
    assert flag_rate_lower_bound(flagged, rows, 0.0) == flagged / rows
    assert flag_rate_lower_bound(0, rows, 0.95) == 0.0


def test_a_few_flagged_rows_of_a_small_change_do_not_fail_the_gate() -> None:
    """12 added rows: 3 flagged (25%) is within what ordinary data gives by chance at a 5%
    flag rate (lower bound 7.2%); 4 flagged (lower bound 12.3%) fails."""
    assert flag_rate_lower_bound(3, 12, 0.95) < 0.10 < flag_rate_lower_bound(4, 12, 0.95)
    assert parse_rules({"flag_rate_confidence": 0.9}, "x.toml").flag_rate_confidence == 0.9
    with pytest.raises(ConfigError, match=r"flag_rate_confidence must be within 0\.\.1"):
        parse_rules({"flag_rate_confidence": 1}, "x.toml")
