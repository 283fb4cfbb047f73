"""One ``nft -f`` transaction that swaps the rules of a NAT table in place.

The VIP tables and the routing mesh's host table are rewritten whenever their task or
port set changes, while connections keep arriving. The swap must be atomic for every
new connection: its first packet sees the old rules or the new ones, never neither.

Deleting the table and creating it anew in one transaction is not enough. A deleted
base chain and its new namesake are two hooks at the same priority for a moment, and
the NAT core evaluates them one after the other: a first packet can pass the new chain
just before the commit (its rules not live yet) and the old chain just after it (its
rules gone), and the connection is then pinned to no translation at all (seen once in
CI as ``No route to host`` for a VIP). So the table and its base chains stay; the
transaction flushes each chain and adds its rules, and the kernel publishes a chain's
new rules as one swap.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["nat_swap_text"]


def nat_swap_text(
    table: str,
    chains: Sequence[tuple[str, str]],
    rules: Sequence[str],
    *,
    comment: str | None = None,
) -> str:
    """Text giving ``ip`` table ``table`` the NAT base chains ``(name, hook)`` (priority
    -100), each holding exactly ``rules`` (pure).

    Declaring the table and chains is a no-op when they exist, so the same text creates
    the table the first time and swaps its rules afterwards. ``comment`` is set when the
    table is created and kept afterwards (nft does not rewrite a table's comment).
    """
    note = f'\tcomment "{comment}"\n' if comment is not None else ""
    decl = "".join(
        f"\tchain {name} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n\t}}\n"
        for name, hook in chains
    )
    lines = [f"table ip {table} {{\n{note}{decl}}}"]
    for name, _ in chains:
        lines.append(f"flush chain ip {table} {name}")
        lines.extend(f"add rule ip {table} {name} {rule}" for rule in rules)
    return "\n".join(lines) + "\n"
