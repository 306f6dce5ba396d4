//! Generates the gRPC code of the `grpc_profiles` example from `proto/profiles.proto` (needs `protoc`:
//! `apt-get install -y protobuf-compiler`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_build::compile_protos("proto/profiles.proto")?;
    Ok(())
}
