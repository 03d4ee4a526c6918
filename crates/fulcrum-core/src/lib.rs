//! Pure decision logic of fulcrum: which server gets the next connection, and when a failing
//! server is taken out of rotation. Everything here takes the clock and random words as
//! arguments and does no I/O, so it is tested exhaustively without sockets. Nothing in this
//! crate may open a socket, read a file, spawn a task or read the system clock.

pub mod acl;
pub mod agent;
pub mod agentcheck;
pub mod balance;
pub mod blame;
pub mod clients;
pub mod eject;
pub mod fanout;
pub mod framing;
pub mod health;
pub mod proxy_header;
pub mod queue;
pub mod resolve;
pub mod retry;
pub mod route;
pub mod scale;
pub mod sni;
pub mod udp;
