//! Raw kernel values in (errno, endpoint, comm, time); what users read out.
//!
//! One decoder per file: none of them knows the model that uses it.

mod comm;
mod endpoint;
mod errno;
mod exe;
mod time;

pub use comm::{comm, label_value};
pub use endpoint::endpoint;
pub use errno::errno_name;
pub use exe::{TRUNCATED_EXE, exe_path};
pub use time::{rfc3339, serialize_rfc3339, wall_time};
