//! Compiles the broker's proto (`../../proto`) into the client's stubs, without a system
//! `protoc`: protox parses it, tonic-prost-build writes the client.

use std::io;

fn main() -> io::Result<()> {
    let root = "../../proto";
    println!("cargo:rerun-if-changed={root}");
    let fds = protox::compile(["tokenbroker/v1/token_service.proto"], [root])
        .map_err(io::Error::other)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)
}
