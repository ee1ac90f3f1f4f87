//! What the embedded object holds, as `lbctl object` lists it and the layout checks read it.
use super::{object, DatapathError};

/// A map of the object: its name, size and layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub name: String,
    pub max_entries: u32,
    pub key_size: u32,
    pub value_size: u32,
}

/// The object's programs and maps, by name.
pub struct ObjectInfo {
    pub programs: Vec<String>,
    pub maps: Vec<MapInfo>,
}

/// Reads the embedded object.
pub fn info() -> Result<ObjectInfo, DatapathError> {
    let bytes = object();
    if bytes.is_empty() {
        return Err(DatapathError::NoObject);
    }
    let obj = aya_obj::Object::parse(bytes).map_err(|e| DatapathError::Parse(e.to_string()))?;
    let mut programs: Vec<String> = obj.programs.keys().cloned().collect();
    programs.sort();
    let mut maps: Vec<MapInfo> = obj
        .maps
        .iter()
        .map(|(name, m)| MapInfo {
            name: name.clone(),
            max_entries: m.max_entries(),
            key_size: m.key_size(),
            value_size: m.value_size(),
        })
        .collect();
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ObjectInfo { programs, maps })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lb_common::{map_names, PINNED_LAYOUTS, PIN_LAYOUT};

    use super::*;

    /// Maps a linker makes for the object's read-only data, not ours.
    fn ours(name: &str) -> bool {
        !name.starts_with('.')
    }

    #[test]
    fn the_object_holds_exactly_the_maps_the_agent_pins_or_keeps_per_instance() {
        let info = info().expect("the embedded object");
        let in_object: BTreeSet<&str> =
            info.maps.iter().map(|m| m.name.as_str()).filter(|n| ours(n)).collect();
        let named: BTreeSet<&str> = map_names::ALL.iter().chain(&map_names::UNPINNED).copied().collect();
        assert_eq!(in_object, named, "a map missing from map_names::ALL would silently not be pinned");
        assert_eq!(map_names::ALL.len() + map_names::UNPINNED.len(), named.len(), "a name listed twice");
    }

    type Layouts = BTreeSet<(String, u32, u32)>;

    /// The object's layouts of the maps `names` (name, key size, value size), and `recorded`'s.
    fn layouts(names: &[&str], recorded: &[(&str, u32, u32)]) -> (Layouts, Layouts) {
        let info = info().expect("the embedded object");
        let actual = info
            .maps
            .iter()
            .filter(|m| names.contains(&m.name.as_str()))
            .map(|m| (m.name.clone(), m.key_size, m.value_size))
            .collect();
        (actual, recorded.iter().map(|&(n, k, v)| (n.to_owned(), k, v)).collect())
    }

    #[test]
    fn the_pinned_maps_have_the_layouts_recorded_for_the_pin_layout() {
        let (actual, recorded) = layouts(&map_names::ALL, PINNED_LAYOUTS);
        assert_eq!(
            actual, recorded,
            "a pinned map's layout changed while PIN_LAYOUT is still {PIN_LAYOUT:?}: an agent of this \
             build would adopt pins of another layout. Move PIN_LAYOUT on and record the new layouts \
             in lb_common::PINNED_LAYOUTS"
        );
    }

    #[test]
    fn a_backend_host_s_pinned_maps_have_the_layouts_recorded_for_its_pin_layout() {
        use crate::backend_host::{PINNED_LAYOUTS as BACKEND, PIN_LAYOUT as BACKEND_LAYOUT};
        let (actual, recorded) = layouts(&map_names::DECAP, BACKEND);
        assert_eq!(
            actual, recorded,
            "a backend host's pinned map changed while its PIN_LAYOUT is still {BACKEND_LAYOUT:?}: move it on \
             and record the new layouts in backend_host::setup::PINNED_LAYOUTS"
        );
    }

    #[test]
    fn the_data_plane_is_reached_only_through_this_module() {
        // Every source file of lb-userspace outside datapath/ (this test excepted).
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.clone()];
        let mut offenders = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                if path.ends_with("datapath") {
                    continue;
                }
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    if code.contains("aya::")
                        || code.contains("aya_obj::")
                        || code.contains(".raw(")
                        || code.contains(".raw_mut(")
                    {
                        offenders.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "aya used outside datapath/:\n{}", offenders.join("\n"));
    }
}
