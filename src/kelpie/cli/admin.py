"""`kelpie users`, `kelpie keys` and `kelpie whoami`."""

from __future__ import annotations

import click

from kelpie.cli.base import Api, emit_fields, emit_json, emit_table, main, when, with_api


@main.group()
def users() -> None:
    """Manage users (admin key)."""


@users.command("create")
@click.argument("name")
@with_api
def create_user(api: Api, name: str) -> None:
    """Create a user; prints its id (give it a key with `kelpie keys create ID`)."""
    user = api.client.create_user(name)
    api.emit(user.model_dump(mode="json"), user.id)


@users.command("delete-all")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_api
def delete_users(api: Api, yes: bool) -> None:
    """Delete every non-admin user and their keys."""
    if not yes:
        click.confirm("Delete every non-admin user and their API keys?", abort=True, err=True)
    api.client.delete_users()
    message = "deleted every non-admin user"
    api.emit({"message": message}, message)


@main.group()
def keys() -> None:
    """Manage API keys (admin key; a user may list and revoke its own)."""


@keys.command("create")
@click.argument("user_id")
@click.option("--org", "org_name", help="SaladCloud organization the key acts for.")
@click.option("--project", "project_name", help="SaladCloud project the key acts for.")
@with_api
def create_key(api: Api, user_id: str, org_name: str | None, project_name: str | None) -> None:
    """Create an API key for a user. It is printed once and cannot be shown again."""
    token = api.client.create_token(user_id, org_name, project_name)
    api.emit({"token": token}, token)


@keys.command("list")
@click.argument("user_id")
@with_api
def list_keys(api: Api, user_id: str) -> None:
    """List a user's API keys: ids and where they act, never the keys themselves.

    An admin key lists anyone's; any key lists its own user's."""
    tokens = api.client.list_tokens(user_id)
    if api.as_json:
        emit_json([token.model_dump(mode="json") for token in tokens])
        return
    emit_table(
        ("ID", "CREATED", "ORG", "PROJECT", "STATE"),
        (
            (
                t.id,
                when(t.created),
                t.org_name or "-",
                t.project_name or "-",
                ("revoked" if t.revoked else "live")
                + (" (KELPIE_ADMIN_KEY)" if t.bootstrap else ""),
            )
            for t in tokens
        ),
    )


@keys.command("revoke")
@click.argument("user_id")
@click.argument("token_id")
@with_api
def revoke_key(api: Api, user_id: str, token_id: str) -> None:
    """Revoke one of a user's API keys (TOKEN_ID from `kelpie keys list`); it stops working at
    once on the API process that answers, within 5 s on the others."""
    api.client.revoke_token(user_id, token_id)
    message = f"revoked key {token_id}"
    api.emit({"message": message}, message)


@main.command()
@with_api
def whoami(api: Api) -> None:
    """Show the user the API key belongs to (--json adds the webhook secret and token)."""
    me = api.client.me()
    if api.as_json:
        emit_json(me.model_dump(mode="json"))
    else:
        emit_fields(
            [("user", me.username), ("id", me.id), ("admin", "yes" if me.is_admin else "no")]
        )
