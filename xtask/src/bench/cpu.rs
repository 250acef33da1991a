//! The CPU a bench ran on, for every result: its model and the vector extensions the kernels can
//! dispatch to (ratios move with them: AVX2-only machines and AVX-512 ones rank differently).

/// Extensions worth naming, as /proc/cpuinfo spells them.
const EXTENSIONS: &[&str] = &[
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
];

/// "MODEL (N cores; ext, ext, ...)"; what is unknown is said so. Read once per process.
pub fn describe() -> String {
    static DESCRIPTION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DESCRIPTION.get_or_init(read).clone()
}

fn read() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (model, flags) = parse_cpuinfo(&info);
    let model = model.or_else(mac_brand).unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ext = if flags.is_empty() { "extensions unknown".to_string() } else { flags.join(", ") };
    format!("{model} ({cores} logical cores; {ext})")
}

/// The first processor's model name and which of [`EXTENSIONS`] its flags hold.
fn parse_cpuinfo(info: &str) -> (Option<String>, Vec<&'static str>) {
    let field = |key: &str| {
        info.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let model = field("model name").or_else(|| field("Model"));
    let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
    let have: Vec<&str> = flags.split_whitespace().collect();
    (model, EXTENSIONS.iter().copied().filter(|e| have.contains(e)).collect())
}

fn mac_brand() -> Option<String> {
    let out = std::process::Command::new("sysctl").args(["-n", "machdep.cpu.brand_string"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_extensions_come_from_cpuinfo() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n";
        let (model, ext) = parse_cpuinfo(info);
        assert_eq!(model.as_deref(), Some("AMD EPYC 9R14"));
        assert_eq!(ext, ["avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"]);
        let (model, ext) = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd sve\n");
        assert_eq!((model, ext), (None, vec!["asimd", "sve"]));
    }
}
