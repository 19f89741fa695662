"""Fast bulk writes of a frame into a table: COPY on PostgreSQL, executemany on SQLite.

Both run on a connection the caller holds inside a transaction, so a failure leaves nothing behind.
"""

import io

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table

# SQLAlchemy's SQLite DateTime stores this exact text; writing anything else breaks comparisons.
SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def format_timestamps(ts: pd.Series) -> pd.Series:
    return ts.dt.strftime(SQLITE_TS_FORMAT)


def epoch_to_datetime(seconds: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(seconds, dtype=np.int64), unit="s"))


def write_frame(conn: Connection, table: Table, frame: pd.DataFrame) -> int:
    """Append `frame` (columns named as in `table`, datetimes as datetime64) and return its row count."""
    names = [col.name for col in table.columns if col.name in frame.columns]
    frame = frame[names]
    if conn.dialect.name == "postgresql":
        _copy(conn, table.name, names, frame)
    else:
        _executemany(conn, table.name, names, frame)
    return len(frame)


def _copy(conn: Connection, table_name: str, names: list[str], frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S.%f")
    buf.seek(0)
    cols = ", ".join(f'"{n}"' for n in names)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(f'COPY "{table_name}" ({cols}) FROM STDIN WITH (FORMAT csv)', buf)
    finally:
        cursor.close()


def _executemany(conn: Connection, table_name: str, names: list[str], frame: pd.DataFrame) -> None:
    out = {}
    for name in names:
        col = frame[name]
        if pd.api.types.is_datetime64_any_dtype(col):
            out[name] = format_timestamps(col).to_numpy(dtype=object)
        elif pd.api.types.is_integer_dtype(col.dtype) and not isinstance(col.dtype, pd.ArrowDtype):
            out[name] = col.to_numpy().tolist()
        else:  # nullable ints and text: None for missing
            out[name] = col.astype(object).where(col.notna(), None).tolist()
    rows = list(zip(*(out[n] for n in names), strict=True))
    placeholders = ", ".join("?" for _ in names)
    cols = ", ".join(f'"{n}"' for n in names)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.executemany(f'INSERT INTO "{table_name}" ({cols}) VALUES ({placeholders})', rows)
    finally:
        cursor.close()
