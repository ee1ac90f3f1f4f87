//! The `ROW|section|case|value|unit|ratio|target|status` lines `cargo xtask bench` collects.

/// One output row.
pub struct Row {
    pub section: &'static str,
    pub case: String,
    pub value: Option<f64>,
    pub decimals: usize,
    pub unit: &'static str,
    pub ratio: Option<f64>,
    /// (text, met)
    pub target: Option<(String, bool)>,
}

impl Row {
    pub fn print(&self) {
        let value = self.value.map_or("void".to_owned(), |v| format!("{v:.*}", self.decimals));
        let ratio = self.ratio.map_or(String::new(), |r| format!("{r:.2}"));
        let (target, status) = match (&self.target, self.value) {
            (Some((t, _)), None) => (t.clone(), "MISS"),
            (Some((t, met)), Some(_)) => (t.clone(), if *met { "ok" } else { "MISS" }),
            (None, _) => (String::new(), "-"),
        };
        println!("ROW|{}|{}|{value}|{}|{ratio}|{target}|{status}", self.section, self.case, self.unit);
    }
}
