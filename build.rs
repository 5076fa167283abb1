//! Compiles the vendored CRI v1 protocol into tonic server and client code.
//! `protox` is a pure-Rust protobuf compiler, so the build needs no `protoc`.
//! The descriptor set is also written to `$OUT_DIR/cri.fds`: the e2e
//! campaign (e2e/campaign.rs) generates random requests from it.

fn main() -> anyhow::Result<()> {
    let proto = "proto/pkg/apis/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("cri.fds");
    std::fs::write(out, prost::Message::encode_to_vec(&files))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(files)?;
    Ok(())
}
