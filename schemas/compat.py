"""Schema compatibility with trajectory v1, for writers (refuse before publishing) and readers.

A schema is v1-compatible when it carries the v1 marker (or none, on the writer side only), every
v1 column it has keeps its v1 type, every required column is present, and no field is an Arrow
extension type. Unknown extra columns are allowed: they are optional columns added by a newer
writer of the same major version, and a v1 reader drops them (`conform`). Nullability flags in the
writer's schema are not part of compatibility; the data itself is checked for nulls instead.
"""

from __future__ import annotations

import pyarrow as pa

from streamrl.schemas.errors import SchemaIncompatibleError
from streamrl.schemas.trajectory import (
    FIELDS_BY_NAME,
    META_SCHEMA,
    META_VERSION,
    REQUIRED_COLUMNS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    TRAJECTORY_FIELDS,
    TRAJECTORY_SCHEMA,
)

EXTENSION_KEY = b"ARROW:extension:name"


def _fail(what: str, where: str, reason_code: str) -> SchemaIncompatibleError:
    return SchemaIncompatibleError(what, where=where, reason_code=reason_code)


def check_version(schema: pa.Schema, *, require_marker: bool) -> None:
    """Check the `streamrl.schema*` metadata. Writers may omit it (v1 is stamped on encode);
    readers require it, because bytes without it may be any Arrow stream at all."""
    meta = schema.metadata or {}
    name, version = meta.get(META_SCHEMA), meta.get(META_VERSION)
    if name is None and version is None:
        if not require_marker:
            return
        raise _fail("schema metadata has no streamrl.schema marker: not a streamrl trajectory "
                    "stream", "schema metadata", "missing_schema_version")
    if name != SCHEMA_NAME.encode():
        raise _fail(f"schema metadata names {name!r}, expected {SCHEMA_NAME!r}", "schema metadata",
                    "wrong_schema")
    if version is None:
        raise _fail("schema metadata has no streamrl.schema_version", "schema metadata",
                    "missing_schema_version")
    # Digits only and short: int() alone would accept ' 1', '+1', '1_0' and 4,000-digit strings.
    if not (version.isdigit() and len(version) <= 6):
        raise _fail(f"schema version {version[:32]!r} is not a major version number",
                    "schema metadata", "bad_schema_version")
    if int(version) != SCHEMA_VERSION:
        raise _fail(f"schema major version {int(version)} is not readable as v{SCHEMA_VERSION}",
                    "schema metadata", "unknown_major_version")


def _has_extension(field: pa.Field) -> bool:
    if field.metadata and EXTENSION_KEY in field.metadata:
        return True
    return _type_has_extension(field.type)


def _type_has_extension(type_: pa.DataType) -> bool:
    if isinstance(type_, pa.BaseExtensionType):
        return True
    if isinstance(type_, pa.DictionaryType):
        return _type_has_extension(type_.value_type)
    return any(_has_extension(type_.field(i)) for i in range(type_.num_fields))


# Schemas that passed `check_compatible`, newest first, per `require_marker`. Every message of a
# stream normally carries the same schema, so one comparison replaces the full walk. `equals`
# with metadata covers names, types, nested fields and the extension-key sets; the dict compare
# adds what `check_version` reads (Arrow's metadata equality tolerates reordered duplicate keys,
# where the dict keeps the first). A memo: it changes no result, only what a repeat costs.
_KNOWN_GOOD_SIZE = 8
_known_good: dict[bool, tuple[pa.Schema, ...]] = {True: (), False: ()}


def check_compatible(schema: pa.Schema, *, require_marker: bool = True) -> None:
    """Raise `SchemaIncompatibleError` naming the first column that breaks v1 compatibility."""
    known = _known_good[require_marker]
    for good in known:
        if schema.equals(good, check_metadata=True) and schema.metadata == good.metadata:
            return
    _check_compatible(schema, require_marker=require_marker)
    # One assignment: a concurrent caller sees the old or the new memo, never a torn one.
    _known_good[require_marker] = (schema, *known[:_KNOWN_GOOD_SIZE - 1])


def _check_compatible(schema: pa.Schema, *, require_marker: bool) -> None:
    check_version(schema, require_marker=require_marker)
    seen: set[str] = set()
    for field in schema:
        if field.name in seen:
            raise _fail(f"column {field.name!r} appears twice", f"column {field.name!r}",
                        "duplicate_column")
        seen.add(field.name)
        # Extension types run reader-side deserialization hooks: never part of the contract.
        if _has_extension(field):
            raise _fail(f"column {field.name!r} uses an Arrow extension type",
                        f"column {field.name!r}", "extension_type")
        expected = FIELDS_BY_NAME.get(field.name)
        if expected is not None and not field.type.equals(expected.type):
            raise _fail(
                f"column {field.name!r} has type {field.type}, v1 declares {expected.type}; "
                "a type change needs a new major schema version",
                f"column {field.name!r}", "type_changed")
    missing = sorted(REQUIRED_COLUMNS - seen)
    if missing:
        name = missing[0]
        unknown = [f.name for f in schema if f.name not in FIELDS_BY_NAME
                   and f.type.equals(FIELDS_BY_NAME[name].type)]
        hint = f"; renamed to {unknown[0]!r}? a rename needs a new major version" if unknown else ""
        raise _fail(f"required column {name!r} is missing{hint}", f"column {name!r}",
                    "missing_column")


def conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Return `batch` with exactly the v1 columns in v1 order and the v1 schema.

    Unknown columns (from a newer writer) are dropped; optional v1 columns an older writer did
    not have are filled with nulls. Call only after `check_compatible` passed.
    """
    return pa.RecordBatch.from_arrays(conform_columns(batch), schema=TRAJECTORY_SCHEMA)


def conform_columns(batch: pa.RecordBatch) -> list[pa.Array]:
    """The columns of `conform(batch)`, in v1 order."""
    positions: dict[str, int] = {}
    for i, name in enumerate(batch.schema.names):
        positions.setdefault(name, i)
    return [
        batch.column(positions[f.name]) if f.name in positions
        else pa.nulls(batch.num_rows, f.type)
        for f in TRAJECTORY_FIELDS
    ]


def has_v1_columns(schema: pa.Schema) -> bool:
    """Whether `schema` has exactly the v1 columns (names, types, order): then `conform` changes
    only schema metadata, which no semantic check reads."""
    return len(schema) == len(TRAJECTORY_FIELDS) and schema.equals(TRAJECTORY_SCHEMA)
