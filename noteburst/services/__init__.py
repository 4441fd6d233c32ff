"""Business logic and transaction boundaries."""
