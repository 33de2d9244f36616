//! Generates the SPANK bindings from the installed <slurm/spank.h> (Debian: libslurm-dev;
//! bindgen needs libclang: Debian libclang-dev). Only the SPANK API is kept, so the same
//! source builds against Slurm 22.05 (Debian 12) and 24.11 (Debian 13): functions that exist
//! only in newer headers (spank_prepend_task_argv, 23.11+) are never referenced.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let mut builder = bindgen::Builder::default()
        .header_contents("wrapper.h", "#include <slurm/spank.h>\n")
        .allowlist_function("spank_.*")
        .allowlist_function("slurm_(error|info|verbose|debug|debug2)")
        .allowlist_type("spank_.*")
        .allowlist_var("SLURM_VERSION_NUMBER|ESPANK_.*|SLURM_BATCH_SCRIPT|SLURM_EXTERN_CONT")
        .blocklist_function("spank_prepend_task_argv")
        .rustified_enum("spank_item|spank_context")
        .derive_default(true)
        .layout_tests(false);
    if let Ok(dir) = env::var("SLURM_INCLUDE_DIR") {
        builder = builder.clang_arg(format!("-I{dir}"));
        println!("cargo:rerun-if-changed={dir}/slurm/spank.h");
    } else {
        println!("cargo:rerun-if-changed=/usr/include/slurm/spank.h");
        println!("cargo:rerun-if-changed=/usr/include/slurm/slurm_version.h");
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!(
            "generating the SPANK bindings from <slurm/spank.h> failed: {e}\n\
             install the Slurm headers (Debian: apt-get install libslurm-dev) and libclang \
             (Debian: apt-get install libclang-dev), or set SLURM_INCLUDE_DIR"
        )
    });
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("spank_bindings.rs");
    bindings
        .write_to_file(&out)
        .expect("writing the SPANK bindings");
}
