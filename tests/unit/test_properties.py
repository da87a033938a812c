"""Property tests (Hypothesis): whatever a client or a would-be backend sends, parsing
either succeeds with safe values or fails with a clean 400 that echoes nothing."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from inferno.api import APIS
from inferno.errors import BadRequest
from inferno.schemas.registration import RegistrationPayload

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
FIELDS = [
    "prompt",
    "model",
    "max_tokens",
    "stream",
    "messages",
    "input",
    "data",
    "model_type",
    "top_k",
    "priority",
]
#: bodies built from the real field names, so validation goes deep rather than failing at once
BODIES = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6) | JSON
SECRET = "ZqX7-secret-marker"


@settings(max_examples=300, deadline=None)
@given(body=BODIES, path=st.sampled_from(sorted(APIS)))
def test_any_json_body_parses_or_is_a_clean_400(body: Any, path: str) -> None:
    api = APIS[path]
    try:
        api.parse(json.dumps(body).encode())
    except BadRequest as exc:
        assert exc.status == 400 and exc.message


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200), path=st.sampled_from(sorted(APIS)))
def test_any_bytes_parse_or_are_a_clean_400(raw: bytes, path: str) -> None:
    with contextlib.suppress(BadRequest):
        APIS[path].parse(raw)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(FIELDS), extra=st.sampled_from(["", "x", "\n"]))
def test_errors_never_echo_client_values(field: str, extra: str) -> None:
    for path, api in APIS.items():
        body = {field: SECRET + extra, SECRET + extra: SECRET}
        try:
            api.parse(json.dumps(body).encode())
        except BadRequest as exc:
            assert SECRET not in exc.message, (path, exc.message)


SAFE_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


@settings(max_examples=300, deadline=None)
@given(
    payload=st.fixed_dictionaries(
        {"address": st.text(max_size=30) | st.just("10.0.0.1:3000"), "node_id": st.text(max_size=20)},
        optional={
            "models": st.lists(st.text(max_size=10) | JSON, max_size=3),
            "vitals": st.dictionaries(st.sampled_from(["in_flight", "slots", "tokens_per_s"]), JSON),
            "state": st.text(max_size=10),
            "weight": JSON,
        },
    )
)
def test_registration_parses_to_safe_values_or_is_refused(payload: dict[str, Any]) -> None:
    try:
        parsed = RegistrationPayload.model_validate_json(json.dumps(payload))
    except ValidationError:
        return
    assert SAFE_ID.fullmatch(parsed.node_id)
    assert "\n" not in parsed.address and "\r" not in parsed.address
    for spec in parsed.models:
        assert SAFE_ID.fullmatch(spec.id)


@settings(max_examples=300, deadline=None)
@given(value=JSON, indent=st.booleans())
def test_the_separator_count_never_undercounts_json_values(value: Any, indent: bool) -> None:
    import orjson

    from inferno.schemas.bounds import count_values, estimate_values

    body = json.dumps(value, indent=2 if indent else None, separators=None if indent else (",", ":")).encode()
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # Infinity: not JSON (and refused before any count)
    exact = count_values(decoded, 10**9)
    assert estimate_values(body) >= exact
    assert count_values(orjson.loads(body), exact - 1) > exact - 1  # an early stop still says "over"
    assert len(body) >= 2 * exact - 1  # so a body of 2n bytes holds at most n values
