//! TCP and UDP echo servers that record the peers they served.
