"""`screener traits`, `screener extract` and `screener vectors`: persona vectors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from screener.cli.common import (
    EXIT_OK,
    add_generator_options,
    add_model_options,
    add_quiet_option,
    answer_server,
    comma_separated,
    model_options,
    progress_printer,
)
from screener.traits import RESPONSE_SOURCES, list_packs, load_pack


def register(commands: Any) -> None:
    """Add the traits, extract and vectors subcommands."""
    traits = commands.add_parser("traits", help="list and show trait packs")
    trait_commands = traits.add_subparsers(dest="traits_command", required=True, metavar="ACTION")
    listing = trait_commands.add_parser("list", help="the shipped trait packs and your own")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_run_traits_list)
    show = trait_commands.add_parser("show", help="one trait pack in full")
    show.add_argument("name", help="a shipped trait name or a pack .json file")
    show.add_argument("--json", action="store_true", help="print the pack as JSON")
    show.set_defaults(run=_run_traits_show)
    new = trait_commands.add_parser(
        "new",
        help="write a new trait pack with a generator model",
        description="Ask a generator model to write a trait pack from a description, validate "
        "it, retry with the validation error, and save it only when valid (under the state "
        "root's traits/ folder unless --out is given).",
    )
    new.add_argument("name", help="trait name: lowercase letters and underscores")
    new.add_argument("--description", required=True, help="what the trait looks like")
    new.add_argument(
        "--generator",
        required=True,
        help="openai:MODEL@BASE_URL (key from $SCREENER_API_KEY) or local:MODEL",
    )
    new.add_argument("--attempts", type=int, default=3, help="tries before giving up (default 3)")
    new.add_argument("--out", type=Path, default=None, help="pack file to write")
    new.add_argument("--force", action="store_true", help="overwrite an existing pack file")
    new.set_defaults(run=_run_traits_new)

    extract = commands.add_parser(
        "extract",
        help="extract persona vectors for traits on a model",
        description="Generate eliciting and suppressing responses for each trait pack (or take "
        "the pack's written answers), take the difference of mean response activations at every "
        "layer, score each layer by the held-out AUROC of the projection, and write a vector "
        "file.",
    )
    add_model_options(extract)
    extract.add_argument(
        "--traits", required=True, help="comma-separated trait names or pack .json files"
    )
    extract.add_argument(
        "--responses",
        choices=RESPONSE_SOURCES,
        default="generated",
        help="generated (default, the paper's method): the model answers under eliciting and "
        "suppressing system prompts; written: the pack's written answers, for models too weak "
        "to role-play a trait on instruction (the embedded model's shipped vectors use them)",
    )
    extract.add_argument(
        "--rollouts",
        type=int,
        default=1,
        help="responses per (instruction, question) and side (default 1)",
    )
    extract.add_argument(
        "--max-new-tokens", type=int, default=96, help="longest generated response (default 96)"
    )
    extract.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy (default); the paper sampled at 1.0",
    )
    extract.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    extract.add_argument(
        "--layer", type=int, default=None, help="use this layer instead of the best held-out AUROC"
    )
    extract.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="most prompts per generation batch (default: 256 on a GPU; on a CPU 128 in bf16, "
        "64 in fp32)",
    )
    extract.add_argument(
        "--judge",
        default="none",
        help="none (default), openai:MODEL@BASE_URL (key from $SCREENER_API_KEY) or "
        "local:MODEL; with a judge only pairs it confirms are kept",
    )
    extract.add_argument(
        "--trait-threshold",
        type=float,
        default=50.0,
        help="judge trait score an eliciting answer needs (default 50)",
    )
    extract.add_argument(
        "--coherence-threshold",
        type=float,
        default=50.0,
        help="judge coherence score both answers need (default 50)",
    )
    extract.add_argument(
        "--max-questions",
        type=int,
        default=None,
        help="use only the first N extraction and held-out questions (quick, rougher runs)",
    )
    extract.add_argument(
        "--out", type=Path, required=True, help="vector file to write (.safetensors)"
    )
    add_generator_options(extract)
    add_quiet_option(extract)
    extract.set_defaults(run=_run_extract)

    steer = commands.add_parser(
        "steer",
        help="answer a question with and without a persona vector added",
        description="Generate the model's answer to QUESTION twice: plain, and with COEF times "
        "the trait's unit vector added to every position at the chosen layer. If the vector "
        "captures the trait, the steered answer shows it.",
    )
    steer.add_argument("question", help="the user message to answer")
    add_model_options(steer)
    steer.add_argument("--vectors", default="builtin", help="vector file (default: builtin)")
    steer.add_argument("--trait", required=True, help="trait to steer toward")
    steer.add_argument(
        "--coef",
        type=float,
        required=True,
        help="how much of the unit vector to add (negative steers away)",
    )
    steer.add_argument(
        "--layer", type=int, default=None, help="layer to steer at (default: chosen)"
    )
    steer.add_argument("--max-new-tokens", type=int, default=96, help="answer length (default 96)")
    add_quiet_option(steer)
    steer.set_defaults(run=_run_steer)

    vectors = commands.add_parser("vectors", help="show and import persona vector files")
    vector_commands = vectors.add_subparsers(
        dest="vectors_command", required=True, metavar="ACTION"
    )
    vshow = vector_commands.add_parser(
        "show", help="metadata and per-layer separation of a vector file"
    )
    vshow.add_argument("file", help="a vector file, or `builtin` for the embedded model's vectors")
    vshow.add_argument("--json", action="store_true", help="print the metadata as JSON")
    vshow.set_defaults(run=_run_vectors_show)
    vimport = vector_commands.add_parser(
        "import",
        help="import reference {trait}_response_avg_diff.pt tensors",
        description="Convert tensors saved by the reference persona-vectors code ([L+1, d] per "
        "trait, loaded with weights_only=True) into a screener vector file for --model.",
    )
    vimport.add_argument("files", nargs="+", type=Path, help="{trait}_response_avg_diff.pt files")
    add_model_options(vimport)
    vimport.add_argument(
        "--layer",
        type=int,
        required=True,
        help="the layer to use for screening (row l = hidden_states[l])",
    )
    vimport.add_argument("--out", type=Path, required=True, help="vector file to write")
    add_quiet_option(vimport)
    vimport.set_defaults(run=_run_vectors_import)


def _run_traits_list(args: argparse.Namespace) -> int:
    packs = list_packs()
    if args.json:
        print(json.dumps([{"name": p.name, "description": p.description} for p in packs], indent=2))
        return EXIT_OK
    width = max(len(p.name) for p in packs)
    for pack in packs:
        print(f"{pack.name:<{width}}  {pack.description}")
    return EXIT_OK


def _run_traits_show(args: argparse.Namespace) -> int:
    pack = load_pack(args.name)
    if args.json:
        print(json.dumps(pack.to_json(), indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{pack.name}: {pack.description}\n")
    for index, pair in enumerate(pack.instructions, start=1):
        print(f"pair {index}\n  + {pair.pos}\n  - {pair.neg}")
    print("\nextraction questions:")
    print("\n".join(f"  {q}" for q in pack.extraction_questions))
    print("\nheld-out evaluation questions:")
    print("\n".join(f"  {q}" for q in pack.eval_questions))
    print(f"\njudge rubric:\n{pack.judge_rubric}")
    return EXIT_OK


def _run_traits_new(args: argparse.Namespace) -> int:
    from screener.traits.writer import make_generator, new_trait

    out = new_trait(
        args.name,
        args.description,
        make_generator(args.generator),
        out=args.out,
        force=args.force,
        attempts=args.attempts,
    )
    print(f"wrote {out}")
    return EXIT_OK


def _run_extract(args: argparse.Namespace) -> int:
    from screener.generate import GenerationSettings
    from screener.judge import make_judge
    from screener.vectors.extract import ExtractionSettings
    from screener.vectors.jobs import extract

    say = progress_printer(args)
    settings = ExtractionSettings(
        args.rollouts,
        GenerationSettings(args.max_new_tokens, args.temperature, seed=args.seed),
        args.layer,
        args.batch_size,
        args.max_questions,
        make_judge(args.judge, dtype=args.dtype, device=args.device),
        args.trait_threshold,
        args.coherence_threshold,
        responses=args.responses,
        server=answer_server(args),
    )
    vector_file = extract(
        comma_separated(args.traits),
        model=model_options(args),
        settings=settings,
        out=args.out,
        progress=say,
        command=args.command_line,
    )
    for name, trait in vector_file.traits.items():
        layer = trait.chosen_layer
        effect = trait.details["heldout_separation"][layer]
        print(
            f"{name}: layer {layer}, held-out AUROC {trait.heldout_auroc[layer]:.3f}, "
            f"effect size {effect:.2f}"
        )
    print(f"wrote {args.out}")
    return EXIT_OK


def _run_steer(args: argparse.Namespace) -> int:
    from screener.vectors.steer import steer_answer

    answers = steer_answer(
        args.question,
        args.trait,
        args.coef,
        model=model_options(args),
        vectors=args.vectors,
        layer=args.layer,
        max_new_tokens=args.max_new_tokens,
        progress=progress_printer(args),
    )
    print(
        f"question: {answers.question}\n\nplain:\n{answers.plain}\n\n"
        f"steered ({answers.trait}, layer {answers.layer}, coef {answers.coef:g}):\n"
        f"{answers.steered}"
    )
    return EXIT_OK


def _run_vectors_show(args: argparse.Namespace) -> int:
    from screener.vectors import load_vectors

    vector_file = load_vectors(args.file)
    meta = vector_file.metadata()
    if args.json:
        print(json.dumps(meta, indent=2))
        return EXIT_OK
    print(
        f"{vector_file.path}\nmodel: {vector_file.model_id} "
        f"(fingerprint {vector_file.fingerprint}, L={vector_file.num_layers}, "
        f"d={vector_file.hidden_size})\ncommand: {vector_file.command}"
    )
    names = list(vector_file.traits)
    for name in names:
        trait = vector_file.traits[name]
        auroc = trait.heldout_auroc[trait.chosen_layer]
        shown = "unknown" if auroc is None else f"{auroc:.3f}"
        effects = trait.details.get("heldout_separation")
        effect = f", effect size {effects[trait.chosen_layer]:.2f}" if effects else ""
        source = trait.details.get("responses")
        made = f" ({source} responses)" if source else ""
        print(f"{name}: chosen layer {trait.chosen_layer}, held-out AUROC {shown}{effect}{made}")
    print("\nheld-out AUROC per layer (* = chosen)")
    print("layer " + " ".join(f"{n[:11]:>12}" for n in names))
    for layer in range(vector_file.num_layers + 1):
        cells = []
        for name in names:
            trait = vector_file.traits[name]
            value = trait.heldout_auroc[layer]
            mark = "*" if layer == trait.chosen_layer else " "
            cells.append(f"{'-' if value is None else f'{value:.3f}'}{mark}".rjust(12))
        print(f"{layer:>5} " + " ".join(cells))
    return EXIT_OK


def _run_vectors_import(args: argparse.Namespace) -> int:
    from screener.vectors.jobs import import_vectors

    vector_file = import_vectors(
        args.files,
        layer=args.layer,
        model=model_options(args),
        out=args.out,
        progress=progress_printer(args),
        command=args.command_line,
    )
    print(f"imported {', '.join(vector_file.traits)} -> {args.out}")
    return EXIT_OK
