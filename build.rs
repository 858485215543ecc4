//! Compiles `proto/` without a system `protoc`: protox parses the files, tonic-prost-build
//! generates the Rust code, and the same descriptor set is written out for server reflection.

use std::{env, fs, io, path::PathBuf};

use prost::Message;

fn main() -> io::Result<()> {
    let proto = "proto/tokenbroker/v1/token_service.proto";
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile([proto], ["proto"]).map_err(io::Error::other)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    fs::write(
        out_dir.join("tokenbroker_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
}
