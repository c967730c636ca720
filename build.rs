//! Exposes the state schema version (the number of migrations) to the build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let count = std::fs::read_dir("migrations")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .count()
        })
        .unwrap_or(0);
    println!("cargo:rustc-env=ORDERBATCH_SCHEMA_VERSION={count}");
}
