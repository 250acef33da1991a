//! A study's grid: config fields that take several values (`--set model.depth=12,16,24`), every
//! combination of which is one cell of runs.

use crate::ConfigError;

/// One axis: a config field (`section.key`) and the values it takes, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl Axis {
    /// `SECTION.KEY=V1,V2,...`: commas outside brackets and quotes separate values, so
    /// `diagnostics.probe_t=[0.1,0.5]` is one value.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let (key, rest) =
            s.split_once('=').ok_or_else(|| format!("--set {s}: expected SECTION.KEY=VALUE[,VALUE...]"))?;
        let (mut values, mut depth, mut quote, mut cur) = (Vec::new(), 0i32, None, String::new());
        for c in rest.chars() {
            match (c, quote) {
                ('"' | '\'', None) => quote = Some(c),
                (q, Some(open)) if q == open => quote = None,
                ('[' | '{', None) => depth += 1,
                (']' | '}', None) => depth -= 1,
                (',', None) if depth == 0 => {
                    values.push(std::mem::take(&mut cur).trim().to_string());
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        values.push(cur.trim().to_string());
        if values.iter().any(String::is_empty) {
            return Err(format!("--set {s}: an empty value").into());
        }
        Ok(Self { key: key.trim().to_string(), values })
    }

    /// The field's own name, for labels: `model.depth` -> `depth`.
    pub fn name(&self) -> &str {
        self.key.rsplit('.').next().unwrap_or(&self.key)
    }
}

/// One combination of axis values: (key, value) per axis, in the axes' order.
pub type Cell = Vec<(String, String)>;

/// Every combination of the axes' values, the first axis varying slowest; one empty cell when
/// there are no axes.
pub fn cells(axes: &[Axis]) -> Vec<Cell> {
    axes.iter().fold(vec![Vec::new()], |acc, axis| {
        acc.iter()
            .flat_map(|cell| {
                axis.values.iter().map(move |v| {
                    let mut c = cell.clone();
                    c.push((axis.key.clone(), v.clone()));
                    c
                })
            })
            .collect()
    })
}

/// `depth=12, lr=1e-3` (empty for the empty cell).
pub fn label(cell: &Cell) -> String {
    cell.iter().map(|(k, v)| format!("{}={v}", short(k))).collect::<Vec<_>>().join(", ")
}

/// A folder-name prefix, `depth12-lr1e-3-` (empty for the empty cell).
pub fn tag(cell: &Cell) -> String {
    cell.iter()
        .map(|(k, v)| {
            let v: String = v.chars().filter(|c| !matches!(c, ':' | '"' | '\'' | ' ')).collect();
            let v: String =
                v.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
            format!("{}{v}-", short(k))
        })
        .collect()
}

fn short(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_split_on_top_level_commas() {
        let a = Axis::parse("train.lr=1e-3, 3e-3,1e-2").unwrap();
        assert_eq!((a.key.as_str(), a.name()), ("train.lr", "lr"));
        assert_eq!(a.values, ["1e-3", "3e-3", "1e-2"]);
        let b = Axis::parse("diagnostics.probe_t=[0.1,0.5],[0.9]").unwrap();
        assert_eq!(b.values, ["[0.1,0.5]", "[0.9]"]);
        assert_eq!(Axis::parse("model.scaling=\"cs:0.5,x\"").unwrap().values.len(), 1);
        assert!(Axis::parse("train.lr").unwrap_err().to_string().contains("SECTION.KEY=VALUE"));
        assert!(Axis::parse("train.lr=1e-3,,2e-3").unwrap_err().to_string().contains("empty value"));
    }

    #[test]
    fn cells_are_the_product_first_axis_slowest() {
        let axes = [Axis::parse("model.depth=12,16").unwrap(), Axis::parse("train.lr=1e-3,1e-2").unwrap()];
        let c = cells(&axes);
        let labels: Vec<String> = c.iter().map(label).collect();
        assert_eq!(labels, ["depth=12, lr=1e-3", "depth=12, lr=1e-2", "depth=16, lr=1e-3", "depth=16, lr=1e-2"]);
        assert_eq!(tag(&c[1]), "depth12-lr1e-2-");
        assert_eq!(cells(&[]), vec![Vec::new()]);
        assert_eq!(tag(&Vec::new()), "");
    }
}
