"""The one list of errors that mean "the database is unavailable", for the worker and the API.

An error in it says nothing of the statement that met it: the connection was refused, lost,
cut by an administrator or a restart, or left by the driver in a state it cannot leave. What
was asked may be asked again once the database answers. Errors a statement's own values can
cause (bad data, a constraint, a deadlock) are not in it.
"""

from __future__ import annotations

import asyncpg

DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    # Refused, reset or unreachable; TimeoutError too: a connect or a command past its time.
    OSError,
    # SQLSTATE class 08: the connection does not exist, failed, or was rejected.
    asyncpg.PostgresConnectionError,
    # Class 57 but query_canceled (a statement of ours that ran too long).
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.DatabaseDroppedError,
    asyncpg.IdleSessionTimeoutError,
    asyncpg.IdleInTransactionSessionTimeoutError,
    asyncpg.TooManyConnectionsError,
    # A standby that was the primary a moment ago: a failover under way.
    asyncpg.ReadOnlySQLTransactionError,
    # The driver's own: the connection is closed, or busy with what a cut interrupted.
    asyncpg.InterfaceError,
    # The driver's protocol state after a cut mid-operation ("cannot switch to state 12").
    asyncpg.InternalClientError,
)


def database_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, DATABASE_UNAVAILABLE)
