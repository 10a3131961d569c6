//! One module per subcommand, plus what the control-plane commands share: the admin client that
//! follows the leader ([`client`]), tables and JSON ([`output`]) and the line diff ([`diff`]).

pub mod audit;
pub mod client;
pub mod cluster;
pub mod diff;
pub mod grant;
pub mod output;
pub mod policy;
pub mod quota;
pub mod serve;
pub mod token;
pub mod upstream;
