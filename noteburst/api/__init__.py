"""GraphQL layer: parse input, call one service, map the result."""
