"""SQLAlchemy table definitions: the one description of the database schema.

Alembic autogenerates migrations from :data:`Base.metadata`, and storage
queries these classes.  Nothing here does I/O, and nothing outside
:mod:`noteburst.storage` (and ``alembic/env.py``) should import this package:
the rest of Noteburst sees only domain objects.
"""

from .base import NAMING_CONVENTION, Base, UTCDateTime
from .execution import ExecutionEventRow, ExecutionRow
from .identity import LabIdentityRow
from .rendering import ExecutionRenderingRow
from .token import ApiTokenRow
from .webhook import WebhookDeliveryRow, WebhookRow

__all__ = [
    "NAMING_CONVENTION",
    "ApiTokenRow",
    "Base",
    "ExecutionEventRow",
    "ExecutionRenderingRow",
    "ExecutionRow",
    "LabIdentityRow",
    "UTCDateTime",
    "WebhookDeliveryRow",
    "WebhookRow",
]
