"""Helpers the agent tests share."""

from __future__ import annotations

import pathlib

import aiohttp


def uri(path: pathlib.Path) -> str:
    return f"file://{path}"


async def scrape(url: str) -> str:
    """The agent's /metrics page."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        return await response.text()
