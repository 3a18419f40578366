//! Generates the ttrpc service and protobuf messages into OUT_DIR at build time
//! (pure Rust: no protoc on the machine). Nothing generated is checked in.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("gen");
    if let Err(err) = std::fs::create_dir_all(&out) {
        panic!("creating {}: {err}", out.display());
    }
    let proto = "protos/socketforward.proto";
    println!("cargo:rerun-if-changed={proto}");
    let result = ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs([proto])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            // Accept is a bidirectional stream: only the async generator supports it.
            async_all: true,
            ..Default::default()
        })
        .run();
    if let Err(err) = result {
        panic!("generating ttrpc code from {proto}: {err}");
    }
    // The generator's own mod.rs omits the ttrpc module, and the ttrpc code
    // names Empty as `super::empty::Empty`: one module file ties them together.
    // Generated code is not held to the workspace's restriction lints.
    let allow = "#[allow(clippy::all, clippy::pedantic, clippy::restriction, missing_docs)]\n";
    let mods = format!(
        "{allow}pub mod socketforward;\n{allow}pub mod socketforward_ttrpc;\n\
                /// google.protobuf.Empty, as the generated ttrpc code names it.\n\
                pub mod empty {{\n    pub use protobuf::well_known_types::empty::Empty;\n}}\n"
    );
    if let Err(err) = std::fs::write(out.join("modules.rs"), mods) {
        panic!("writing {}: {err}", out.join("modules.rs").display());
    }
}
