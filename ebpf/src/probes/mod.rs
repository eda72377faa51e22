//! One probe a file: each reads its context and hands an event to the state
//! machine in `sockerr-common`.

pub mod call_site;
pub mod connect;
pub mod io;
pub mod release;
pub mod so_error;
pub mod state;
