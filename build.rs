//! Generates the labaid.v1 gRPC code from `proto/` with protox, so no `protoc` is needed.

use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/labaid/v1/common.proto",
        "proto/labaid/v1/requests.proto",
        "proto/labaid/v1/labs.proto",
        "proto/labaid/v1/directory.proto",
        "proto/labaid/v1/coordinator.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    // Reflection serves this descriptor set, so grpcurl needs no proto files.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("labaid_descriptor.bin"), fds.encode_to_vec())?;
    // Every rpc's path, so that metrics label known methods only (a caller cannot mint labels).
    let mut methods = String::from("&[\n");
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push_str(&format!(
                    "    \"/{}.{}/{}\",\n",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    methods.push_str("]\n");
    std::fs::write(out.join("labaid_methods.rs"), methods)?;
    // Messages and servers: the servers decode with our codec, so that a malformed request is
    // the caller's INVALID_ARGUMENT (src/wire/codec.rs).
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::wire::codec::ServerCodec")
        .compile_fds(fds.clone())?;
    // Clients only, over the messages above, with prost's codec: a malformed answer is the
    // broker's fault, not the caller's.
    let clients = out.join("client");
    std::fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".labaid.v1", "crate::proto")
        .out_dir(&clients)
        .compile_fds(fds)?;
    Ok(())
}
