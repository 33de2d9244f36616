// Link the restorer as a static, non-PIE executable at a fixed address far from where
// Linux places programs, libraries and stacks, so it needs no relocation and rarely
// collides with a region to restore (`ckpt restart` checks that it does not).
fn main() {
    for a in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--image-base=0x1f0000000000",
        "-Wl,-z,noexecstack",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={a}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
