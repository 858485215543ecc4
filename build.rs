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

    // Two builds of the same messages. The library's `proto` (clients, tests, users): the
    // messages as prost makes them, and the client. The server's own (`grpc::wire`): the
    // answers' token boxed, because an answer is moved through several layers of futures on
    // its way out, and a 16-byte answer moves cheaper than a 160-byte one (about 350
    // instructions per cached call, BENCHMARKS.md). The bytes on the wire are the same.
    for dir in ["client", "server"] {
        fs::create_dir_all(out_dir.join(dir))?;
    }
    tonic_prost_build::configure()
        .out_dir(out_dir.join("client"))
        .build_client(true)
        .build_server(false)
        .compile_fds(fds.clone())?;
    tonic_prost_build::configure()
        .out_dir(out_dir.join("server"))
        .boxed(".tokenbroker.v1.GetOrgTokenResponse.token")
        .boxed(".tokenbroker.v1.GetUserTokenResponse.token")
        .boxed(".tokenbroker.v1.RefreshResponse.token")
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)
}
