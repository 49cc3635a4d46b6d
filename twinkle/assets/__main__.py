"""``twinkle-assets``: make the tiny model and the self-cognition data on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Make the small, real artifacts that the demo and the tests use offline.", no_args_is_help=True)


@app.command("tiny-model")
def tiny_model(
    output_dir: Annotated[Path, typer.Argument(help="Folder to write the model and tokenizer into.")],
    hidden_size: int = typer.Option(64, help="Model width."),
    num_layers: int = typer.Option(2, help="Decoder layers."),
    seed: int = typer.Option(0, help="Weight-initialisation seed."),
) -> None:
    """Write a tiny Qwen2 causal LM with a chat-template tokenizer (loads with AutoModelForCausalLM)."""
    from twinkle.assets import make_tiny_model

    path = make_tiny_model(output_dir, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    typer.echo(str(path))


@app.command("self-cognition")
def self_cognition(
    output_dir: Annotated[Path, typer.Argument(help="Folder to write self_cognition.jsonl into.")]
) -> None:
    """Write the bundled self-cognition rows (query/response with {{NAME}}/{{AUTHOR}}) as jsonl."""
    from twinkle.assets import self_cognition_path

    typer.echo(str(self_cognition_path(output_dir)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
