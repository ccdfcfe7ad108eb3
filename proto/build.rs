// Generates the messages (always) and the tonic stubs (feature `grpc`) with a vendored protoc,
// so building needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_protos(
            &[
                "tollgate/v1/audit.proto",
                "tollgate/v1/approvals.proto",
                "tollgate/v1/revocations.proto",
            ],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=tollgate");
    Ok(())
}
