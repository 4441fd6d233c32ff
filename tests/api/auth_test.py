"""Which requests get GraphiQL's page: browsers asking for HTML, share links too."""

from __future__ import annotations

import pytest

from noteburst.api.auth import wants_graphiql_page

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SHARED = {"query": "mutation { submitExecution }", "variables": "{}"}


@pytest.mark.parametrize(
    ("method", "accept", "params", "page"),
    [
        ("GET", BROWSER, {}, True),
        ("GET", BROWSER, SHARED, True),  # a share link opens the page prefilled
        ("GET", "text/html", SHARED, True),
        ("GET", "*/*", {}, True),  # Strawberry's rule for a bare GET
        ("GET", "*/*", SHARED, False),  # curl, fetch(): GraphQL over GET
        ("GET", "application/json", SHARED, False),
        ("GET", "application/graphql-response+json", {"query": "{ a }"}, False),
        ("GET", "", {}, False),
        ("POST", BROWSER, {}, False),
        ("POST", BROWSER, SHARED, False),
    ],
)
def test_wants_graphiql_page(
    method: str, accept: str, params: dict[str, str], page: bool
) -> None:
    headers = {"accept": accept} if accept else {}
    assert wants_graphiql_page(method, headers, params) is page
