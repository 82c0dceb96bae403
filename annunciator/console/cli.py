"""``annunciator console-user``: make a console sign-in (a password hash for the config)."""

from __future__ import annotations

import click
import yaml

from .auth import hash_password

MIN_PASSWORD = 8


@click.group("console-user")
def console_user() -> None:
    """Web console users (the config's console.users section)."""


@console_user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="viewer", show_default=True)
@click.option("--full-name", default="", help="shown in the console's header")
@click.option("--password", envvar="ANNUNCIATOR_CONSOLE_PASSWORD", hidden=True,
              help="for scripts only; asked for (twice, not echoed) when not given")
def add(name: str, role: str, full_name: str, password: str | None) -> None:
    """Print the config lines for console user NAME; the password is asked for and stored only as
    an argon2 hash. Paste them under `console: users:` and restart (or reload) the gateway."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise click.UsageError(f"the password must have at least {MIN_PASSWORD} characters")
    entry: dict[str, str] = {"password_hash": hash_password(password), "role": role}
    if full_name:
        entry["name"] = full_name
    click.echo(yaml.safe_dump({"console": {"users": {name: entry}}}, sort_keys=False).rstrip())


@console_user.command("hash")
def hash_cmd() -> None:
    """Print the argon2 hash of a password (asked for twice, not echoed)."""
    click.echo(hash_password(click.prompt("Password", hide_input=True, confirmation_prompt=True)))
