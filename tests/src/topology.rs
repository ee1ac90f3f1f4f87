//! The standard end-to-end topology: client, lb and backends on a bridge in a fabric namespace.
