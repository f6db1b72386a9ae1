//! Compiles the .proto files with `protox` (a protobuf compiler written in
//! Rust), so that a fresh clone builds without a system `protoc`.

/// `FileEntry` as `swarmseed_core::layout::FileEntry` encodes it (field,
/// tag, protobuf type). The generated code uses that struct instead of
/// generating one, so the build stops here when agent.proto changes the
/// message and the struct has not followed.
const CORE_FILE_ENTRY: &[(&str, i32, &str)] = &[
    ("path", 1, "TYPE_STRING"),
    ("size", 2, "TYPE_UINT64"),
    ("mode", 3, "TYPE_UINT32"),
    ("etag", 4, "TYPE_STRING"),
    ("version", 5, "TYPE_STRING"),
    ("checksum", 6, "TYPE_STRING"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["swarmseed/agent/v1/agent.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let file_entry: Vec<(&str, i32, &str)> = descriptors
        .file
        .iter()
        .flat_map(|f| &f.message_type)
        .filter(|m| m.name() == "FileEntry")
        .flat_map(|m| &m.field)
        .map(|f| (f.name(), f.number(), f.r#type().as_str_name()))
        .collect();
    if file_entry != CORE_FILE_ENTRY {
        return Err(format!(
            "agent.proto's FileEntry is {file_entry:?}, but swarmseed_core::layout::FileEntry \
             encodes {CORE_FILE_ENTRY:?}: change both together"
        )
        .into());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The listed file is core's type, so the layout, the digests and the
        // wire share one definition.
        .extern_path(
            ".swarmseed.agent.v1.FileEntry",
            "::swarmseed_core::layout::FileEntry",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
