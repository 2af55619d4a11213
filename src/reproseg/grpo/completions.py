"""A TRL completion's text, without importing TRL or torch (reward functions use it)."""
from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """Text of one TRL completion: a plain string, or the assistant messages of a chat."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return "".join(parts)
