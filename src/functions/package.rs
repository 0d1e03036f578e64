//! `tunelake package`: the deployable Function App, as a folder and a zip for zip deploy:
//! `host.json`, one folder per function with its `function.json`, and this very binary (build
//! it with `cargo build --release` for Linux x86-64, the Functions host's platform). Nothing
//! else goes in. The JSON files are built into the binary, so a package always matches the
//! code that serves it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `host.json` and the function definitions, as in the repository.
pub const FILES: [(&str, &str); 7] = [
    ("host.json", include_str!("../../host.json")),
    (
        "ingest/function.json",
        include_str!("../../functions/ingest/function.json"),
    ),
    (
        "silver/function.json",
        include_str!("../../functions/silver/function.json"),
    ),
    (
        "gold/function.json",
        include_str!("../../functions/gold/function.json"),
    ),
    (
        "alert/function.json",
        include_str!("../../functions/alert/function.json"),
    ),
    (
        "query/function.json",
        include_str!("../../functions/query/function.json"),
    ),
    (
        "refresh/function.json",
        include_str!("../../functions/refresh/function.json"),
    ),
];

/// The executable's name in the package (host.json's `defaultExecutablePath`).
pub const EXECUTABLE: &str = "tunelake";

/// Writes `<out>/app/` and `<out>/tunelake-functions.zip`; returns the zip's path.
pub fn build(out: &Path, binary: &Path) -> Result<PathBuf> {
    let app = out.join("app");
    if app.exists() {
        std::fs::remove_dir_all(&app).map_err(|e| Error::io(&app, e))?;
    }
    let binary_bytes = std::fs::read(binary).map_err(|e| Error::io(binary, e))?;
    let mut entries: Vec<(String, Vec<u8>, u32)> = FILES
        .iter()
        .map(|(name, text)| (name.to_string(), text.as_bytes().to_vec(), 0o644))
        .collect();
    entries.push((EXECUTABLE.to_string(), binary_bytes, 0o755));
    for (name, bytes, mode) in &entries {
        let path = app.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        set_mode(&path, *mode)?;
    }
    let zip_path = out.join("tunelake-functions.zip");
    let file = std::fs::File::create(&zip_path).map_err(|e| Error::io(&zip_path, e))?;
    let mut writer = std::io::BufWriter::new(file);
    write_zip(&mut writer, &entries).map_err(|e| Error::io(&zip_path, e))?;
    writer.flush().map_err(|e| Error::io(&zip_path, e))?;
    Ok(zip_path)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// A zip archive (deflated entries, Unix modes so the binary stays executable after zip
/// deploy). The format is small enough that a dependency would cost more than it saves.
fn write_zip(out: &mut impl Write, entries: &[(String, Vec<u8>, u32)]) -> std::io::Result<()> {
    let mut central = Vec::new();
    let mut offset: u64 = 0;
    for (name, bytes, mode) in entries {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes)?;
        let compressed = encoder.finish()?;
        let crc = crc32fast::hash(bytes);
        let too_big = |n: usize| {
            u32::try_from(n).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "entry over 4 GB")
            })
        };
        let (size, packed) = (too_big(bytes.len())?, too_big(compressed.len())?);
        let local_offset = u32::try_from(offset)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "zip over 4 GB"))?;
        let name_len = name.len() as u16;
        // Local file header.
        let mut header = Vec::with_capacity(30 + name.len());
        header.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        header.extend_from_slice(&20u16.to_le_bytes()); // version needed
        header.extend_from_slice(&0u16.to_le_bytes()); // flags
        header.extend_from_slice(&8u16.to_le_bytes()); // deflate
        header.extend_from_slice(&0u16.to_le_bytes()); // time
        header.extend_from_slice(&0x21u16.to_le_bytes()); // date: 1980-01-01
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(&packed.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(&name_len.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        out.write_all(&header)?;
        out.write_all(&compressed)?;
        // Central directory entry, "made by" Unix so the mode is honoured.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&((3u16 << 8) | 20).to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&8u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0x21u16.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&packed.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // extra
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&((0o100_000 | mode) << 16).to_le_bytes());
        central.extend_from_slice(&local_offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        offset += (header.len() + compressed.len()) as u64;
    }
    let central_offset = u32::try_from(offset)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "zip over 4 GB"))?;
    out.write_all(&central)?;
    let count = entries.len() as u16;
    out.write_all(&0x0605_4b50u32.to_le_bytes())?;
    out.write_all(&0u16.to_le_bytes())?;
    out.write_all(&0u16.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    out.write_all(&(central.len() as u32).to_le_bytes())?;
    out.write_all(&central_offset.to_le_bytes())?;
    out.write_all(&0u16.to_le_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_folder_is_packaged_and_served() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut folders: Vec<String> = std::fs::read_dir(root.join("functions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        folders.sort();
        let mut routes: Vec<String> = super::super::FUNCTIONS
            .iter()
            .map(|s| s.to_string())
            .collect();
        routes.sort();
        assert_eq!(
            folders, routes,
            "functions/ folders and the handler's routes"
        );
        let mut packaged: Vec<String> = FILES
            .iter()
            .filter_map(|(n, _)| n.strip_suffix("/function.json").map(String::from))
            .collect();
        packaged.sort();
        assert_eq!(packaged, routes);
        let host: serde_json::Value = serde_json::from_str(FILES[0].1).unwrap();
        assert_eq!(
            host["customHandler"]["description"]["defaultExecutablePath"],
            EXECUTABLE
        );
        assert_eq!(
            host["customHandler"]["description"]["arguments"][0],
            "serve"
        );
        assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
        for (name, text) in FILES {
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
