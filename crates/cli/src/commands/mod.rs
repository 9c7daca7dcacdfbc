pub mod bench;
pub mod bench_api;
pub mod database;
pub mod identity;
pub mod server;
