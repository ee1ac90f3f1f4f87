//! The status page's files, inside the binary: the page works on a host without internet.
//!
//! uPlot (MIT, <https://github.com/leeoniya/uPlot>) is vendored as npm publishes it: version
//! [`UPLOT_VERSION`], `dist/uPlot.iife.min.js` and `dist/uPlot.min.css` of `npm pack uplot@1.6.32`
//! (sha256 of the tarball 4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d), with
//! its licence, which the page links to.

/// The vendored uPlot's version (the first line of its script says it too).
pub const UPLOT_VERSION: &str = "1.6.32";
/// What the page and everything it loads may weigh at most, uncompressed.
pub const PAGE_BUDGET: usize = 300 * 1024;

pub const INDEX: &str = include_str!("assets/index.html");

/// A file under `/assets/`.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: include_str!("assets/app.css") },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_str!("assets/uPlot.LICENSE"),
    },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_str!("assets/favicon.svg") },
];

pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_every_asset_and_stays_small() {
        let total = INDEX.len() + ASSETS.iter().map(|a| a.body.len()).sum::<usize>();
        assert!(
            total < PAGE_BUDGET,
            "the status page and its assets weigh {total} bytes, over {PAGE_BUDGET}"
        );
        for a in ASSETS {
            let linked = INDEX.contains(&format!("\"/assets/{}\"", a.name));
            assert!(linked, "{} is shipped but the page does not use it", a.name);
        }
    }

    #[test]
    fn the_vendored_uplot_is_the_version_noted() {
        let script = asset("uPlot.iife.min.js").expect("uPlot").body;
        assert!(script.starts_with(&format!("/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION}) */")));
        assert!(asset("uPlot.LICENSE").expect("its licence").body.contains("Leon Sorokin"));
    }
}
