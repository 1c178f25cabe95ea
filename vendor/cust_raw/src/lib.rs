#![allow(warnings)]

mod cuda;
// sparse_tc: the driver library is loaded at run time (see ../README.md in vendor/).
mod dynamic;
pub use cuda::*;
