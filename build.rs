//! Compiles the vendored CRI v1 protocol into tonic server and client code.
//! `protox` is a pure-Rust protobuf compiler, so the build needs no `protoc`.

fn main() -> anyhow::Result<()> {
    let proto = "proto/pkg/apis/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(files)?;
    Ok(())
}
