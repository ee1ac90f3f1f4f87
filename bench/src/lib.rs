//! What the bench binaries (`src/bin`) share: their own build of the XDP programs
//! ([`programs`]) and the median of their rounds ([`stats`]). The test kit (`lb-tests`:
//! namespaces, topologies, lbd as a process) is theirs too, as a library.
pub mod programs;
pub mod stats;
