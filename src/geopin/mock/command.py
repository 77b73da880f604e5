"""The ``mock-upstream`` command; kept out of ``geopin.cli`` so it runs on its own too."""

from __future__ import annotations

import click

from geopin.mock.server import run


@click.command("mock-upstream")
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on.")
@click.option("--region", required=True, help="Region name this upstream reports in answers.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay before every model answer.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of model requests answered with 500.",
)
@click.option(
    "--stream-chunks",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Content pieces per answer (one event each when streaming).",
)
@click.option(
    "--chunk-delay-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay between streamed events.",
)
@click.option("--seed", type=int, default=None, help="Seed for --fail-rate, for repeatable runs.")
def mock_upstream(
    port: int,
    region: str,
    host: str,
    latency_ms: float,
    fail_rate: float,
    stream_chunks: int,
    chunk_delay_ms: float,
    seed: int | None,
) -> None:
    """Serve an OpenAI-, Azure- and Anthropic-compatible mock model API for one region."""
    click.echo(f"mock upstream {region} on http://{host}:{port}", err=True)
    run(
        region,
        port,
        host,
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        stream_chunks=stream_chunks,
        chunk_delay_ms=chunk_delay_ms,
        seed=seed,
    )
