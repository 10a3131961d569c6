//! One module per subcommand.

pub mod audit;
pub mod policy;
pub mod serve;
pub mod token;
