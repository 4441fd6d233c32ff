"""Pure business objects and rules: no I/O, no SQLAlchemy, no Strawberry."""
