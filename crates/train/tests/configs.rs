//! Every shipped recipe in `configs/` reads and passes the config checks (the default run's is
//! compiled into the binary, so a typo there would only surface on a user's first `train`).

use scalelong_train::TrainConfig;

#[test]
fn shipped_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            TrainConfig::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            read += 1;
        }
    }
    assert!(read >= 2, "found {read} configs in {}", dir.display());
}
