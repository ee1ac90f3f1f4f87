use std::path::Path;

use hyper::Method;

use super::{Ctx, Failure};
use crate::api::CaptureRequest;

pub async fn run(ctx: &Ctx, vip: String, count: usize, file: &Path, timeout_s: u64) -> Result<(), Failure> {
    let request = CaptureRequest { vip: vip.clone(), count, timeout_ms: timeout_s.saturating_mul(1000) };
    let body = serde_json::to_vec(&request).expect("serializes");
    let res = ctx.call_full(Method::POST, "/v1/capture", Some(("application/json", body)), None).await?;
    std::fs::write(file, &res.body)
        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", file.display())))?;
    let header = |name: &str| res.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned();
    let (captured, lost) = (header("x-captured-packets"), header("x-lost-samples"));
    let note = if captured == count.to_string() { String::new() } else { " (the timeout came first)".into() };
    if ctx.json {
        // Scripts need the figures: a capture the timeout cut short is no error.
        let n = |v: &str| v.parse::<u64>().unwrap_or(0);
        let out = serde_json::json!({
            "vip": vip, "asked": count, "captured": n(&captured), "lost": n(&lost), "file": file,
        });
        println!("{out}");
        return Ok(());
    }
    ctx.done(&format!(
        "captured {captured} of {count} packets of {vip}{note}, each before and after its rewrite, to {} ({lost} lost); read it with `tcpdump -r {}`",
        file.display(),
        file.display()
    ))
}
