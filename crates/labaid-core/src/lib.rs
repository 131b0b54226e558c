//! labaid's pure core: the domain types that cannot hold invalid values, and the router that
//! applies every command at a time it is given. No I/O, no tokio, no tonic: the broker's engine
//! and `labaid-sim`'s virtual time run the same code.

pub mod domain;
pub mod routing;
