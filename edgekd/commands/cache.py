"""``edgekd cache list`` and ``edgekd cache prune``: what edgekd keeps in its cache folder, and removing it."""

from __future__ import annotations

import time

import click

from edgekd.clicommon import echo_json

_CACHE_DIR = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                          help="Cache folder (default $EDGEKD_CACHE or ~/.cache/edgekd).")
_DEBUG = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")


@click.group("cache")
def cache_group():
    """What edgekd keeps in its cache folder (teacher logits, decoded images, split files, conversions)."""


@cache_group.command("list")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print every entry as JSON.")
@_DEBUG
def list_cmd(cache_dir, as_json, **_):
    """Entries by kind: how many, their size, when the oldest and the newest were last used."""
    from edgekd.cachedir import KINDS, cache_entries, default_cache_dir

    folder = cache_dir or default_cache_dir()
    entries = cache_entries(folder)
    if as_json:
        echo_json({"cache_dir": str(folder), "entries": [e.to_dict() for e in entries]})
        return
    if not entries:
        click.echo(f"nothing cached in '{folder}'")
        return
    click.echo(f"cache folder '{folder}':")
    for kind in KINDS:
        mine = [e for e in entries if e.kind == kind]
        if mine:
            click.echo(f"  {kind:<12} {len(mine):>5} entries  {_size(sum(e.bytes for e in mine)):>10}  "
                       f"last used {_age(mine[-1].last_used)} (oldest {_age(mine[0].last_used)})")
    click.echo(f"  {'total':<12} {len(entries):>5} entries  {_size(sum(e.bytes for e in entries)):>10}")


@cache_group.command("prune")
@_CACHE_DIR
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=None,
              help="Remove entries not used for this many days.")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(("logits", "decoded", "splits", "conversions", "unfinished")),
              help="Only entries of this kind (repeatable; default every kind).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_DEBUG
def prune_cmd(cache_dir, older_than, everything, kinds, dry_run, **_):
    """Remove cache entries; each is made again when next needed.

    \b
    edgekd cache prune --older-than 30          # not used for a month
    edgekd cache prune --kind splits --all      # every split file of every image folder
    """
    from edgekd.cachedir import KINDS, default_cache_dir, prune_cache
    from edgekd.errors import ConfigError

    if (older_than is None) == (not everything):
        raise ConfigError("Pass --older-than DAYS or --all (one of them) to say which cache entries to remove.")
    folder = cache_dir or default_cache_dir()
    result = prune_cache(folder, older_than_days=older_than, kinds=kinds or KINDS, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(result.removed)} entr{'y' if len(result.removed) == 1 else 'ies'} ({_size(result.bytes)}) "
               f"from '{folder}'; {result.kept} kept")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _age(when: float) -> str:
    days = (time.time() - when) / 86400
    return "today" if days < 1 else f"{days:.0f} days ago"
