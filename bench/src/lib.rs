//! What the bench binaries (`src/bin`) share: their own build of the XDP programs
//! ([`programs`]), the balancer as they configure it ([`balancer`]), the median of their rounds
//! ([`stats`]) and the rows of a case in every traffic shape ([`by_shape`]). The test kit (`lb-tests`:
//! namespaces, topologies, lbd as a process) is theirs too, as a library.
pub mod balancer;
pub mod by_shape;
pub mod programs;
pub mod row;
pub mod stats;
pub mod thread;
