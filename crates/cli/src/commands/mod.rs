pub mod bench;
pub mod database;
pub mod identity;
pub mod server;
