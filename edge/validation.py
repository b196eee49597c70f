"""Pydantic validation errors as one line a person can act on: which key, which value, what is expected."""
from __future__ import annotations

from pydantic import ValidationError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # addresses no other machine can reach
MIN_TOKEN_LENGTH = 12
EXPECTED = {
    "int_type": "expected a whole number", "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number", "float_type": "expected a number",
    "float_parsing": "expected a number", "bool_type": "expected true or false",
    "bool_parsing": "expected true or false", "string_type": "expected text", "tuple_type": "expected a list",
    "list_type": "expected a list", "dict_type": "expected a table", "model_type": "expected a table",
    "dataclass_type": "expected a table", "model_attributes_type": "expected a table",
}


def check_token(token: str, key: str) -> None:
    """A secret that guards a page on the network: long and varied enough not to be guessed."""
    if len(token) < MIN_TOKEN_LENGTH or len(set(token)) < 8:
        raise ValueError(f"{key} is too short or too plain: use at least {MIN_TOKEN_LENGTH} characters, 8 of them "
                         "different (e.g. the output of `python3 -c \"import secrets; print(secrets.token_urlsafe(16))\"`)")


def describe(error: ValidationError, where: str = "") -> str:
    """The first problem of a ValidationError, e.g. "camera.kind = 'webcam': use one of picamera2, ...".
    Messages of the project's own validators already name the key and the value and are kept as they are."""
    first = error.errors(include_url=False)[0]
    key = ".".join(str(part) for part in first["loc"])
    kind, value = first["type"], first.get("input")
    prefix = f"{where}: " if where else ""
    if kind == "value_error":
        return prefix + str(first["ctx"]["error"])
    if kind == "missing":
        return f"{prefix}required key {key!r} is missing"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{prefix}unknown key {key!r}"
    if kind == "literal_error":
        expected = first["ctx"]["expected"].replace("' or '", "', '")
        return f"{prefix}{key} = {value!r}: use one of {expected.replace(chr(39), '')}"
    message = EXPECTED.get(kind) or first["msg"].replace("Input should", "should")
    return f"{prefix}{key} = {value!r}: {message}"
