pub mod bench;
pub mod bench_api;
pub mod bench_claims;
pub mod bench_objects;
pub mod compute;
pub mod database;
pub mod identity;
pub mod server;
